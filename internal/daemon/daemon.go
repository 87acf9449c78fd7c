// Package daemon runs `cdc run`: it becomes the slot's leader (or waits as a
// hot standby), creates the slot and backfills the rows that predate it, then
// streams: replication → decoder → pipeline (batches) → sink → checkpoint.
// Any failure ends the session; the next session starts after a backoff from
// what is durable, so a restart loses and repeats nothing.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/getsentry/sentry-go"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-cdc/outbox-cdc/backfill"
	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/backoff"
	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/errclass"
	"github.com/outbox-cdc/outbox-cdc/internal/lease"
	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
	"github.com/outbox-cdc/outbox-cdc/pipeline"
	"github.com/outbox-cdc/outbox-cdc/replication"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// Daemon is one `cdc run` process.
type Daemon struct {
	cfg     *config.Config
	log     *slog.Logger
	metrics *metrics.Metrics
	retry   backoff.Policy

	pool  *pgxpool.Pool
	sink  *sink.ClickHouse
	store *checkpoint.Store

	streaming atomic.Bool
	// setUp is set once a session has passed every set-up check (sink
	// opened, publication and slot usable) and begun to backfill or
	// stream. Before that, an error errclass finds permanent ends Run: a
	// typo in the configuration must not look like an outage. After it,
	// every error retries (a server may be restored, a table re-created).
	setUp atomic.Bool
	// lease is the current term's leader lease: every write of the term is
	// fenced by it (the sink asks it before each insert, markings check its
	// term). Nil between terms.
	lease atomic.Pointer[lease.Lease]
	// chReady is the sink for readiness checks from the HTTP goroutine;
	// only the session goroutine uses sink itself.
	chReady atomic.Pointer[sink.ClickHouse]
}

// New prepares a daemon; nothing connects until Run.
func New(cfg *config.Config, log *slog.Logger, m *metrics.Metrics) *Daemon {
	return &Daemon{cfg: cfg, log: log, metrics: m,
		retry: backoff.Policy{Initial: cfg.Retry.InitialBackoff, Max: cfg.Retry.MaxBackoff}}
}

// Ready reports whether the stream is connected and ClickHouse answers.
func (d *Daemon) Ready(ctx context.Context) error {
	if !d.streaming.Load() {
		return errors.New("replication stream not connected (standby, starting or reconnecting)")
	}
	s := d.chReady.Load()
	if s == nil {
		return errors.New("clickhouse not connected")
	}
	return s.Ping(ctx)
}

// Run runs until stop ends (then it delivers and confirms what it has read,
// within the hard context, and returns nil) or a fatal error. hard bounds all
// I/O: cancel it when the shutdown grace period is over.
func (d *Daemon) Run(stop, hard context.Context) error {
	pool, err := OpenPool(hard, d.cfg)
	if err != nil {
		return err
	}
	d.pool = pool
	defer pool.Close()
	d.store = checkpoint.NewStore(pool, d.cfg.Postgres.Table)
	defer func() {
		if d.sink != nil {
			d.sink.Close()
		}
	}()

	monCtx, stopMonitor := context.WithCancel(hard)
	var monitor sync.WaitGroup
	defer monitor.Wait()
	defer stopMonitor()
	monitor.Go(func() { defer reportPanic(); d.monitorSlot(monCtx) })

	for attempt := 1; ; attempt++ {
		started := time.Now()
		err := d.session(stop, hard)
		if stop.Err() != nil {
			if hard.Err() != nil {
				return fmt.Errorf("shutdown grace period expired before everything read was delivered; it will be sent again on restart: %w", err)
			}
			return nil
		}
		if permanent(err) {
			return err
		}
		if !d.setUp.Load() {
			if perr := errclass.Permanent(err); perr != nil {
				d.report(perr, nil)
				return perr
			}
		}
		if time.Since(started) > time.Minute {
			attempt = 1
		}
		d.report(err, nil)
		wait := d.retry.Delay(attempt)
		d.log.Error("session ended, restarting", "slot", d.cfg.Postgres.Slot, "err", err, "retry_in", wait.Round(time.Millisecond))
		if backoff.Sleep(stop, wait) != nil {
			return nil
		}
	}
}

// OpenPool opens the connection pool for regular (non-replication) work.
func OpenPool(ctx context.Context, c *config.Config) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(c.Postgres.URL)
	if err != nil {
		return nil, fmt.Errorf("postgres.url: %w", err)
	}
	// Backfilled values are read as text: render them as the stream does.
	cfg.ConnConfig.RuntimeParams["DateStyle"] = "ISO"
	cfg.ConnConfig.RuntimeParams["TimeZone"] = "UTC"
	cfg.ConnConfig.RuntimeParams["IntervalStyle"] = "postgres"
	cfg.ConnConfig.RuntimeParams["extra_float_digits"] = "3"
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "outbox-cdc"
	}
	// The daemon's statements are short and indexed: JIT never pays off, and
	// an over-estimate on a big outbox would compile every marking.
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "SET jit = off")
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42704" { // no JIT before PostgreSQL 11
			return nil
		}
		return err
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: create pool: %w", err)
	}
	return pool, nil
}

// session is one leadership term.
func (d *Daemon) session(stop, hard context.Context) error {
	lead, err := d.becomeLeader(stop, hard)
	if err != nil || lead == nil {
		return err
	}
	// Released last, once nothing of this term writes any more: a successor
	// then need not wait the lease out.
	defer lead.Release(context.Background())
	d.lease.Store(lead)
	defer d.lease.Store(nil)
	d.metrics.Leader.Set(1)
	defer d.metrics.Leader.Set(0)

	// A lease that cannot be renewed ends the term: another instance may
	// take over, and must not find us still writing. The sink and the
	// markings check the lease themselves, so nothing is written after it
	// ran out even before this cancellation lands.
	ctx, cancel := context.WithCancelCause(hard)
	var wg sync.WaitGroup
	defer wg.Wait() // before Release: the renewals use the lease's connection
	defer cancel(nil)
	wg.Go(func() {
		if err := lead.Keep(ctx); err != nil {
			cancel(err)
		}
	})
	err = d.lead(stop, ctx)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) && hard.Err() == nil {
		return cause
	}
	return err
}

// fence is the sink's check before each insert: the current term's lease.
func (d *Daemon) fence() error {
	l := d.lease.Load()
	if l == nil {
		return fmt.Errorf("%w: not the leader", lease.ErrLost)
	}
	return l.Check()
}

// fencedStore marks rows only while this term's lease is not taken over.
func (d *Daemon) fencedStore() *checkpoint.Store {
	if l := d.lease.Load(); l != nil {
		return d.store.Fenced(checkpoint.Term{Lease: l.Name(), Term: l.Term()})
	}
	return d.store.Fenced(checkpoint.Term{Lease: "", Term: -1}) // never matches
}

// becomeLeader takes the slot's leader lease, waiting as a standby while
// another instance holds it. It returns nil, nil when stop ends the wait.
func (d *Daemon) becomeLeader(stop, ctx context.Context) (*lease.Lease, error) {
	slot := d.cfg.Postgres.Slot
	for waited := false; ; waited = true {
		lead, err := lease.TryAcquire(ctx, d.cfg.Postgres.URL, leaderLease(slot, d.cfg.Replication.LeaderLease, d.log))
		if err != nil {
			return nil, err
		}
		if lead != nil {
			if waited {
				d.log.Info("took over as leader", "slot", slot, "term", lead.Term())
			}
			return lead, nil
		}
		d.log.Info("standby: another instance leads this slot; waiting", "slot", slot,
			"holder", replication.LeaderHolder(ctx, d.pool, slot), "retry_in", d.cfg.Replication.StandbyRetry)
		if backoff.Sleep(stop, d.cfg.Replication.StandbyRetry) != nil {
			return nil, nil
		}
	}
}

// leaderLease describes the slot's leader lease. Its lock key is the one
// replication.LeaderHolder looks for.
func leaderLease(slot string, ttl time.Duration, log *slog.Logger) lease.Options {
	return lease.Options{Name: "leader:" + slot, LockKey: "outbox-cdc:" + slot, TTL: ttl, Logger: log}
}

func (d *Daemon) lead(stop, ctx context.Context) error {
	if d.sink == nil {
		s, err := sink.Open(ctx, d.sinkOptions(false))
		if err != nil {
			return err
		}
		d.sink = s
		d.chReady.Store(s)
		m := s.Mode()
		d.log.Info("clickhouse: writing to "+d.cfg.ClickHouse.Database+"."+m.Table, "mode", m.String(),
			"engine", m.Engine, "replicas", m.Replicas, "insert_quorum", m.Quorum)
	}
	// Before the slot: a publication that leaves outbox rows out of the
	// stream would let the slot move past them.
	if err := replication.CheckPublication(ctx, d.pool, d.cfg.Postgres.Publication, d.cfg.Postgres.Table); err != nil {
		return err
	}
	slotName := d.cfg.Postgres.Slot
	slot, err := replication.LookupSlot(ctx, d.pool, slotName)
	var state backfill.State
	switch {
	case errors.Is(err, replication.ErrSlotNotFound):
		if state, err = d.createSlot(ctx); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		if err := slot.CheckUsable(); err != nil {
			return err
		}
		var db string
		if err := d.pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
			return fmt.Errorf("postgres: current database: %w", err)
		}
		if slot.Database != db {
			return fmt.Errorf("postgres: replication slot %q belongs to database %q, not %q: choose another postgres.slot", slotName, slot.Database, db)
		}
		if err := d.ensureFailoverSlot(ctx); err != nil {
			return err
		}
		if state, err = backfill.LoadState(ctx, d.pool, slotName); err != nil {
			return err
		}
		if !state.Exists || state.Creating() {
			// The slot was created but its snapshot's backfill list was
			// never committed: nothing was streamed from it, so re-create it.
			d.log.Warn("slot exists without recorded state (interrupted creation): re-creating it", "slot", slotName)
			if err := replication.DropSlot(ctx, d.pool, slotName); err != nil {
				return err
			}
			if state, err = d.createSlot(ctx); err != nil {
				return err
			}
		}
	}
	if !state.Done {
		if err := d.backfill(stop, ctx, state); err != nil {
			return err
		}
		if stop.Err() != nil {
			return nil
		}
	}
	// Chores of the leader; they end with the term.
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { defer reportPanic(); d.retryLoop(ctx) })
	wg.Go(func() { defer reportPanic(); d.verifyLoop(ctx) })
	wg.Go(func() { defer reportPanic(); d.heartbeat(ctx) })
	wg.Go(func() { defer reportPanic(); d.retention(ctx) })
	return d.stream(stop, ctx)
}

func (d *Daemon) createSlot(ctx context.Context) (backfill.State, error) {
	slotName := d.cfg.Postgres.Slot
	if err := backfill.BeginCreation(ctx, d.pool, slotName); err != nil {
		return backfill.State{}, err
	}
	conn, err := replication.Connect(ctx, d.cfg.Postgres.URL)
	if err != nil {
		return backfill.State{}, err
	}
	defer conn.Close(context.Background())
	created, err := d.createReplicationSlot(ctx, conn)
	if err != nil {
		return backfill.State{}, err
	}
	n, err := backfill.Prepare(ctx, d.pool, slotName, d.cfg.Postgres.Table, created.Snapshot, created.ConsistentPoint)
	if err != nil {
		conn.Close(context.Background())
		if dropErr := replication.DropSlot(context.Background(), d.pool, slotName); dropErr != nil {
			d.log.Error("could not drop the half-created slot", "slot", slotName, "err", dropErr)
		}
		return backfill.State{}, err
	}
	d.log.Info("created replication slot", "slot", slotName, "consistent_lsn", created.ConsistentPoint.String(), "backfill_rows", n)
	return backfill.State{Exists: true, ConsistentLSN: created.ConsistentPoint}, nil
}

func (d *Daemon) newPipeline(w pipeline.Writer, tracker *checkpoint.Tracker, budget *pipeline.Budget) *pipeline.Pipeline {
	return pipeline.New(pipelineOptions(d.cfg, budget), w, &reportingMarker{Marker: d.fencedStore(), d: d}, tracker, d.metrics, d.log)
}

// pipelineOptions are the batching options of every path (stream,
// backfill, re-drive); budget is the byte budget its source acquires rows
// from (pipeline.DefaultBudget: DESIGN.md §3 invariant 14).
func pipelineOptions(cfg *config.Config, budget *pipeline.Budget) pipeline.Options {
	return pipeline.Options{
		Size: cfg.Batch.Size, MaxRows: cfg.Batch.MaxRows, MaxBytes: cfg.Batch.MaxBytes, FlushInterval: cfg.Batch.FlushInterval,
		Queue: cfg.Batch.QueueBatches, Retry: backoff.Policy{Initial: cfg.Retry.InitialBackoff, Max: cfg.Retry.MaxBackoff},
		Budget: budget,
	}
}

// report sends err to Sentry (a no-op without sentry.dsn) with the slot,
// the confirmed LSN and the batch settings as context.
func (d *Daemon) report(err error, extra map[string]any) {
	sentry.WithScope(func(s *sentry.Scope) {
		s.SetTag("slot", d.cfg.Postgres.Slot)
		s.SetTag("table", d.cfg.Postgres.Table)
		c := sentry.Context{
			"confirmed_lsn": pglogrepl.LSN(metrics.Value(d.metrics.ConfirmedLSN)).String(),
			"batch_size":    d.cfg.Batch.Size,
			"leader":        d.streaming.Load(),
		}
		for k, v := range extra {
			c[k] = v
		}
		s.SetContext("cdc", c)
		sentry.CaptureException(err)
	})
}

// reportingMarker reports rows ClickHouse rejected to Sentry as they are
// marked failed.
type reportingMarker struct {
	pipeline.Marker
	d *Daemon
}

func (m *reportingMarker) MarkFailed(ctx context.Context, f []checkpoint.Failure, xids []uint32) error {
	if err := m.Marker.MarkFailed(ctx, f, xids); err != nil {
		return err
	}
	ids := make([]int64, len(f))
	for i := range f {
		ids[i] = f[i].ID
	}
	m.d.report(fmt.Errorf("clickhouse rejected %d rows, marked failed: %s", len(f), f[0].Error), map[string]any{"row_ids": ids})
	return nil
}

func sinkOptions(cfg *config.Config, log *slog.Logger, checkEveryRow bool, fence func() error) sink.Options {
	c := cfg.ClickHouse
	return sink.Options{
		Addr: c.Addr, Database: c.Database, Table: c.Table, Username: c.Username, Password: c.Password,
		DialTimeout: c.DialTimeout, Compression: c.Compression == "lz4", CheckEveryRow: checkEveryRow, Fence: fence, Logger: log,
		Cluster: c.Cluster, InsertQuorum: c.Quorum(), InsertQuorumTimeout: c.InsertQuorumTimeout,
		DialContext: chclient.DialContext(c),
	}
}

// sinkOptions are the options of a sink fenced by the leader lease.
func (d *Daemon) sinkOptions(checkEveryRow bool) sink.Options {
	return sinkOptions(d.cfg, d.log, checkEveryRow, d.fence)
}

// backfill delivers the rows listed when the slot was created, then records
// that it is done. Stopping midway is safe: the list survives.
func (d *Daemon) backfill(stop, ctx context.Context, state backfill.State) error {
	slotName := d.cfg.Postgres.Slot
	// Every backfilled row is looked up (id and fingerprint) before it is
	// inserted, not only those near a high-water mark: rows the list names
	// may already be stored under positions unrelated to this slot's (a
	// previous slot delivered them but died before marking them, a
	// failover re-created the slot, or a re-drive stored them). The check
	// costs a scan of ClickHouse's id column per batch, once per slot.
	w, err := sink.Open(ctx, d.sinkOptions(true))
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Recover(ctx, backfill.Position(state.ConsistentLSN, 0).LSN); err != nil {
		return err
	}
	d.setUp.Store(true)
	d.log.Info("backfill: delivering rows that predate the slot", "slot", slotName)
	in := newInput(d.cfg.Batch.Size)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	budget := pipeline.DefaultBudget(d.cfg.Batch.MaxBytes)
	pipe := startPipeline(pctx, d.newPipeline(w, checkpoint.NewTracker(0), budget), in)

	start := time.Now()
	n, err := backfill.Run(ctx, d.pool, slotName, d.cfg.Postgres.Table, state.ConsistentLSN, d.cfg.Batch.Size, func(r sink.Row) error {
		if err := pipe.hand(stop, in, budget, &r); err != nil {
			return err
		}
		d.metrics.Backfilled.Inc()
		return nil
	})
	close(in)
	if err != nil && stop.Err() == nil {
		cancel()
		<-pipe.done
		return err
	}
	if err := pipe.wait(); err != nil {
		return err
	}
	if stop.Err() != nil {
		d.log.Info("backfill interrupted by shutdown; it resumes on the next start", "slot", slotName, "rows", n)
		return nil
	}
	if err := backfill.MarkDone(ctx, d.pool, slotName); err != nil {
		return err
	}
	d.log.Info("backfill done", "slot", slotName, "rows", n, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// stream starts replication from the slot's confirmed position and runs
// until stop (graceful) or an error.
func (d *Daemon) stream(stop, ctx context.Context) error {
	slotName := d.cfg.Postgres.Slot
	var st *replication.Stream
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
		st, err = replication.Start(ctx, conn, replication.StartOptions{
			Slot: slotName, Publication: d.cfg.Postgres.Publication,
			StatusInterval: d.cfg.Replication.StatusInterval, Logger: d.log,
		})
		if errors.Is(err, replication.ErrSlotInUse) {
			conn.Close(context.Background())
			// After a crash the old walsender can hold the slot until
			// wal_sender_timeout; wait rather than fail.
			d.log.Warn("slot is active in another session; waiting", "slot", slotName,
				"holder", replication.Holder(ctx, d.pool, slot.ActivePID), "retry_in", d.cfg.Replication.StandbyRetry)
			if backoff.Sleep(stop, d.cfg.Replication.StandbyRetry) != nil {
				return nil
			}
			continue
		}
		if err != nil {
			conn.Close(context.Background())
			return err
		}
		defer conn.Close(context.Background())
		// True from the first scrape: the slot's position until this
		// stream confirms past it.
		d.metrics.ConfirmedLSN.Set(float64(slot.ConfirmedFlush))
		d.log.Info("streaming", "slot", slotName, "from_lsn", slot.ConfirmedFlush.String())
		return d.pump(stop, ctx, st, checkpoint.NewTracker(slot.ConfirmedFlush))
	}
}

// pump reads the stream and feeds the pipeline, answering the server in
// between. One goroutine owns the connection: when the pipeline is full it
// stops reading (TCP backpressure holds the walsender) but keeps sending
// status so the server does not time the connection out.
func (d *Daemon) pump(stop, ctx context.Context, st *replication.Stream, tracker *checkpoint.Tracker) error {
	d.setUp.Store(true)
	d.streaming.Store(true)
	d.metrics.Connected.Set(1)
	defer func() {
		d.streaming.Store(false)
		d.metrics.Connected.Set(0)
	}()

	in := newInput(d.cfg.Batch.Size)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	budget := pipeline.DefaultBudget(d.cfg.Batch.MaxBytes)
	pipe := startPipeline(pctx, d.newPipeline(d.sink, tracker, budget), in)

	src := newSource(d.cfg.Postgres.Table, d.metrics, budget)
	err := src.read(stop, ctx, st, tracker, in, pipe)
	if err != nil {
		cancel()
		<-pipe.done
		return err
	}
	// Graceful stop: deliver what was read, confirm it, then leave.
	close(in)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-pipe.done:
			if pipe.err != nil {
				return pipe.err
			}
			final := src.confirmable(tracker.Durable())
			if err := st.SendStatus(ctx, final); err != nil {
				return err
			}
			d.log.Info("stopped cleanly", "slot", d.cfg.Postgres.Slot, "confirmed_lsn", final.String())
			return nil
		case <-tick.C:
			if err := st.UpdateStatus(ctx, tracker.Durable()); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// runningPipeline is a pipeline running in its own goroutine. done is
// closed (never sent on) when it returns, so any number of waiters see it.
type runningPipeline struct {
	done chan struct{}
	err  error
}

func startPipeline(ctx context.Context, p *pipeline.Pipeline, in <-chan pipeline.Item) *runningPipeline {
	r := &runningPipeline{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer reportPanic()
		r.err = p.Run(ctx, in)
	}()
	return r
}

// reportPanic sends a panic to Sentry (when configured) before letting it
// crash the process: goroutines other than main are not covered by the
// command's own recovery.
func reportPanic() {
	if r := recover(); r != nil {
		sentry.CurrentHub().Recover(r)
		sentry.Flush(5 * time.Second)
		panic(r)
	}
}

func (r *runningPipeline) wait() error {
	<-r.done
	return r.err
}

// hand passes row to the pipeline (the backfill's and the re-drive's way
// in), first taking its bytes from budget: it waits while the rows the
// pipeline holds fill the budget. It gives up when stop ends or the
// pipeline stops.
func (r *runningPipeline) hand(stop context.Context, in chan<- pipeline.Item, budget *pipeline.Budget, row *sink.Row) error {
	size := row.Size()
	if err := budget.Acquire(stop, size, r.done); err != nil {
		if errors.Is(err, pipeline.ErrBudgetStopped) {
			return pipelineStopped(r.err)
		}
		return err
	}
	select {
	case in <- pipeline.Item{Row: row, Size: size}:
		return nil
	case <-stop.Done():
		budget.Release(int64(size))
		return stop.Err()
	case <-r.done:
		return pipelineStopped(r.err)
	}
}

func pipelineStopped(err error) error {
	if err == nil {
		err = errors.New("pipeline stopped")
	}
	return err
}

// newInput is the channel a stream, backfill or re-drive feeds its pipeline
// through. It is short: the batcher drains it in bursts. The rows it holds
// count against the pipeline's byte budget, so whatever their size it never
// holds more bytes than the budget allows.
func newInput(batchSize int) chan pipeline.Item {
	return make(chan pipeline.Item, min(batchSize, 1024))
}
