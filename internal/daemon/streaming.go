package daemon

// Streaming: replication → source → pipeline → sink → checkpoint, and the
// slot's confirmation (docs/architecture.md: §3.1, §3.5, §3.6, §3.9, §8).
//
// One goroutine (pump) owns the replication connection: it reads, hands rows
// to the pipeline and sends status. When the pipeline is full it stops
// reading (TCP backpressure holds the walsender) but keeps sending status,
// so the server never times the connection out. The pipeline runs in its
// own goroutines (delivery) and advances the durable LSN once a
// transaction's rows are all inserted and marked; only that, or the
// keepalive's position when nothing is in flight, is confirmed (source).
// The graceful stop closes the pipeline's input: what was read is
// delivered, marked and confirmed before the stream ends.
//
// delivery is also how the backfill, the re-drives and replay run their
// pipelines: the same batching options, byte budget and input, so every
// path is bounded in memory the same way (§3.14).

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/lease"
	"github.com/outbox-cdc/outbox-cdc/pipeline"
	"github.com/outbox-cdc/outbox-cdc/replication"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// stream starts replication from the slot's confirmed position and runs
// until the graceful stop or an error.
func (d *Daemon) stream(ctx context.Context, sd *Shutdown) error {
	slotName := d.cfg.Postgres.Slot
	waitLog := newOnceThenEvery(time.Minute)
	for {
		slot, err := replication.LookupSlot(ctx, d.pool, slotName)
		if err != nil {
			return err
		}
		if err := slot.CheckUsable(); err != nil {
			return err
		}
		if err := d.sink.Recover(ctx, uint64(slot.ConfirmedFlush)); err != nil {
			return err
		}
		conn, err := replication.Connect(ctx, d.cfg.Postgres.URL)
		if err != nil {
			return err
		}
		st, err := replication.Start(ctx, conn, replication.StartOptions{
			Slot: slotName, Publication: d.cfg.Postgres.Publication,
			StatusInterval: d.cfg.Replication.StatusInterval, Logger: d.log,
		})
		if errors.Is(err, replication.ErrSlotInUse) {
			conn.Close(context.Background())
			// After a crash the old walsender can hold the slot until
			// wal_sender_timeout; wait rather than fail.
			holder := replication.Holder(ctx, d.pool, slot.ActivePID)
			d.ready.set("waiting for slot %q: it is active in another session, held by %s", slotName, holder)
			if waitLog.allow() {
				d.log.Warn("slot is active in another session; waiting", "slot", slotName,
					"holder", holder, "retry_every", d.cfg.Replication.StandbyRetry)
			}
			if err := sd.sleep(ctx, d.cfg.Replication.StandbyRetry); errors.Is(err, errDraining) {
				return nil
			} else if err != nil {
				return err
			}
			continue
		}
		if err != nil {
			conn.Close(context.Background())
			return err
		}
		// True from the first scrape: the slot's position until this
		// stream confirms past it.
		d.metrics.ConfirmedLSN.Set(float64(slot.ConfirmedFlush))
		d.confirmed.Store(uint64(slot.ConfirmedFlush))
		d.log.Info("streaming", "slot", slotName, "from_lsn", slot.ConfirmedFlush.String())
		err = d.pump(ctx, sd, st, checkpoint.NewConfirmer(slot.ConfirmedFlush))
		conn.Close(context.Background())
		if !resend(err) || sd.Draining() {
			return err
		}
		// The rows of the INSERT kept open are gone: read them again from
		// the slot, once ClickHouse answers (Recover then waits for the
		// failed INSERT and finds what it stored). The session, its lease
		// and the backoff between sessions are not involved.
		d.log.Warn("clickhouse insert kept open across a backlog's batches failed; its rows are read again from the slot once ClickHouse answers", "slot", slotName, "err", err)
		d.ready.set("clickhouse unreachable (inserts are retried): %v", err)
		if err := d.awaitClickHouse(ctx, sd); errors.Is(err, errDraining) {
			return nil
		} else if err != nil {
			return err
		}
		// Our walsender leaves the slot as soon as it sees the connection
		// closed: wait for that rather than standby_retry.
		for range 250 {
			if s, err := replication.LookupSlot(ctx, d.pool, slotName); err != nil || s.ActivePID == 0 {
				break
			}
			if err := sd.sleep(ctx, 20*time.Millisecond); err != nil {
				break
			}
		}
	}
}

// resend reports whether err ended a stream only because its open INSERT
// failed (pipeline.ErrResend) while this process may still write.
func resend(err error) bool {
	return errors.Is(err, pipeline.ErrResend) && !errors.Is(err, lease.ErrLost) && !errors.Is(err, checkpoint.ErrFenced)
}

// awaitClickHouse returns once ClickHouse answers a ping (tried every
// 200 ms), or with errDraining or ctx's error.
func (d *Daemon) awaitClickHouse(ctx context.Context, sd *Shutdown) error {
	for {
		if err := d.sink.Ping(ctx); err == nil {
			return nil
		}
		if err := sd.sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// pump reads the stream and feeds the pipeline, answering the server in
// between, until the graceful stop (then it delivers and confirms what it
// read) or an error.
func (d *Daemon) pump(ctx context.Context, sd *Shutdown, st *replication.Stream, confirm *checkpoint.Confirmer) error {
	d.setUp.Store(true)
	d.streaming.Store(true)
	d.ready.streaming()
	d.metrics.Connected.Set(1)
	defer func() {
		d.streaming.Store(false)
		d.ready.set("replication stream ended")
		d.metrics.Connected.Set(0)
	}()

	// The stream's rows can be read again from the slot: its INSERT may be
	// kept open across batches (pipeline.Options.Append).
	dl := d.startDelivery(ctx, observedWriter{w: d.sink, ready: d.ready}, confirm, true)
	src := newSource(d.cfg.Postgres.Table, d.metrics, dl.budget, confirm)
	src.hb = d.heartbeats
	d.heartbeats.follow(confirm.Durable)
	status := func(ctx context.Context) error { return d.confirm(ctx, st, confirm, false) }
	if err := src.read(ctx, sd, st, dl, status); err != nil {
		return dl.finish(err)
	}
	// Graceful stop: deliver what was read, confirm it, then leave.
	dl.closeInput()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-dl.done:
			if dl.err != nil {
				return dl.err
			}
			if err := d.confirm(ctx, st, confirm, true); err != nil {
				return err
			}
			d.log.Info("stopped cleanly", "slot", d.cfg.Postgres.Slot, "confirmed_lsn", st.Confirmed().String())
			return nil
		case <-tick.C:
			if err := status(ctx); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// confirm sends the slot what confirm allows: now, or when a status update
// is due (replication.Stream.UpdateStatus), and publishes what the slot was
// last told (cdc_confirmed_lsn, Sentry reports).
func (d *Daemon) confirm(ctx context.Context, st *replication.Stream, confirm *checkpoint.Confirmer, now bool) error {
	lsn := confirm.Confirmable()
	send := st.UpdateStatus
	if now {
		send = st.SendStatus
	}
	if err := send(ctx, lsn); err != nil {
		return err
	}
	if c := st.Confirmed(); c != 0 {
		d.metrics.ConfirmedLSN.Set(float64(c))
		d.confirmed.Store(uint64(c))
	}
	return nil
}

// startDelivery starts a pipeline of the daemon's term over w (the stream's
// or the backfill's), marking through the fenced store (rows rejected are
// reported to Sentry); it reports to the stream's observer.
func (d *Daemon) startDelivery(ctx context.Context, w pipeline.Writer, positions pipeline.Positions, appending bool) *delivery {
	return startDelivery(ctx, d.cfg, w, &reportingMarker{Marker: d.fencedStore(), d: d}, positions, streamObserver{workObserver{d.metrics}}, d.log, appending)
}

// delivery is a pipeline running in its own goroutine and the input its
// source feeds it through. done is closed (never sent on) when the pipeline
// returns, so any number of waiters see it; err is set before.
type delivery struct {
	in     chan pipeline.Item
	budget *pipeline.Budget
	done   chan struct{}
	err    error
	cancel context.CancelFunc
	closed bool
}

// startDelivery starts the pipeline of any path (stream, backfill,
// re-drive, replay) with the batching options of cfg. Its byte budget
// (pipeline.DefaultBudget: docs/configuration.md, Memory) counts every row from
// the moment it is handed on; the input channel is short, since the batcher
// drains it in bursts, and the rows it holds count against the budget, so
// whatever their size it never holds more bytes than the budget allows.
func startDelivery(ctx context.Context, cfg *config.Config, w pipeline.Writer, mk pipeline.Marker,
	positions pipeline.Positions, obs pipeline.Observer, log *slog.Logger, appending bool) *delivery {
	budget := pipeline.DefaultBudget(cfg.Batch.MaxBytes)
	// Every line of the pipeline (a row rejected, an insert retried) names
	// the slot and the table it concerns.
	log = log.With("slot", cfg.Postgres.Slot, "table", cfg.Postgres.Table)
	p := pipeline.New(pipeline.Options{
		Size: cfg.Batch.Size, MaxRows: cfg.Batch.MaxRows, MaxBytes: cfg.Batch.MaxBytes, FlushInterval: cfg.Batch.FlushInterval,
		Queue: cfg.Batch.QueueBatches, Append: appending, Retry: pipeline.Backoff{Initial: cfg.Retry.InitialBackoff, Max: cfg.Retry.MaxBackoff},
		Budget: budget,
	}, w, mk, positions, obs, log)
	ctx, cancel := context.WithCancel(ctx)
	dl := &delivery{in: make(chan pipeline.Item, min(cfg.Batch.Size, 1024)), budget: budget, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(dl.done)
		defer reportPanic()
		dl.err = p.Run(ctx, dl.in)
	}()
	return dl
}

// hand passes row to the pipeline (the backfill's, the re-drives' and
// replay's way in), first taking its bytes from the budget: it waits while
// the rows the pipeline holds fill the budget. It gives up with errDraining
// when drain closes (nil: never), and when ctx ends or the pipeline stops.
func (dl *delivery) hand(ctx context.Context, drain <-chan struct{}, row *sink.Row) error {
	size := row.Size()
	for !dl.budget.TryAcquire(size) {
		select {
		case <-dl.budget.Freed():
		case <-drain:
			return errDraining
		case <-dl.done:
			return pipelineStopped(dl.err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	select {
	case dl.in <- pipeline.Item{Row: row, Size: size}:
		return nil
	case <-drain:
		dl.budget.Release(int64(size))
		return errDraining
	case <-dl.done:
		return pipelineStopped(dl.err)
	case <-ctx.Done():
		dl.budget.Release(int64(size))
		return ctx.Err()
	}
}

// closeInput tells the pipeline that nothing more comes: it delivers what
// it holds, then returns.
func (dl *delivery) closeInput() {
	if !dl.closed {
		close(dl.in)
		dl.closed = true
	}
}

// finish ends a delivery whose source is done. After a read that failed
// (readErr) it stops the pipeline at once, waits for it and returns readErr:
// what was not delivered is not durable and will be read again. After a
// read that ended well it waits until everything handed on is delivered and
// returns the pipeline's error.
func (dl *delivery) finish(readErr error) error {
	dl.closeInput()
	if readErr != nil {
		dl.cancel()
	}
	<-dl.done
	dl.cancel()
	if readErr != nil {
		return readErr
	}
	return dl.err
}

func pipelineStopped(err error) error {
	if err == nil {
		err = errors.New("pipeline stopped")
	}
	return err
}
