// Package daemon runs `cdc run`, in three parts, one file each:
//
//   - leadership.go: the slot's leader lease (lock, renewal, fencing) and
//     the hot standby's wait for it. Keeps §3.8 (one consumer) and §3.10
//     (nothing is written once a successor may have started).
//   - bootstrap.go: the publication check, the slot (created with its
//     exported snapshot, or re-created when its creation was interrupted),
//     the backfill state and the backfill. Keeps §3.4 (rows that predate the
//     slot are delivered once) and §3.11 (a re-created slot is safe).
//   - streaming.go: replication → source → pipeline → sink → checkpoint,
//     and the confirmation of the slot. Keeps §3.1 (confirm only what is
//     durable), §3.5/§3.14 (bounded memory), §3.6 (slot hygiene) and §3.9
//     (a graceful stop delivers what was read).
//
// Beside them: redrive.go (re-driving failed rows: `cdc retry-failed` and
// the periodic re-drive), replay.go (`cdc replay`), chores.go (the leader's
// and every instance's periodic work). Any failure ends the session; the
// next session starts after a backoff from what is durable, so a restart
// loses and repeats nothing.
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
	// heartbeats measures cdc_heartbeat_lag_seconds; nil when
	// heartbeat.interval is 0 (the gauge is then absent).
	heartbeats *heartbeatClock
	// slotLost is the reason the slot cannot stream while waitLostSlot
	// waits for an operator; nil otherwise.
	slotLost atomic.Pointer[string]
	// confirmed is the LSN the stream last confirmed to the slot (0 before
	// the first stream), for reports.
	confirmed atomic.Uint64
	// ready is what /readyz answers (Ready).
	ready *readiness
}

// New prepares a daemon; nothing connects until Run.
func New(cfg *config.Config, log *slog.Logger, m *metrics.Metrics) *Daemon {
	return &Daemon{cfg: cfg, log: log, metrics: m, ready: newReadiness(),
		retry: backoff.Policy{Initial: cfg.Retry.InitialBackoff, Max: cfg.Retry.MaxBackoff}}
}

// Ready reports whether the stream is connected, inserts reach their
// quorum and ClickHouse answers; else why not (see readiness).
func (d *Daemon) Ready(ctx context.Context) error {
	if reason := d.slotLost.Load(); reason != nil {
		return errors.New(*reason)
	}
	var ch pipeline.Pinger
	if s := d.chReady.Load(); s != nil {
		ch = s
	}
	return d.ready.check(ctx, ch)
}

// Run runs sessions until sd begins the graceful stop (then it delivers and
// confirms what it has read and returns nil), ctx ends (the hard stop: all
// I/O ends; cancel it when the shutdown grace period is over) or a fatal
// error.
func (d *Daemon) Run(ctx context.Context, sd *Shutdown) error {
	pool, err := OpenPool(ctx, d.cfg)
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

	monCtx, stopMonitor := context.WithCancel(ctx)
	var monitor sync.WaitGroup
	defer monitor.Wait()
	defer stopMonitor()
	monitor.Go(func() { defer reportPanic(); d.monitorSlot(monCtx) })
	if d.cfg.Heartbeat.Interval > 0 {
		d.heartbeats = newHeartbeatClock(time.Now())
		monitor.Go(func() { defer reportPanic(); d.refreshHeartbeatLag(monCtx) })
	}

	for attempt := 1; ; attempt++ {
		started := time.Now()
		err := d.session(ctx, sd)
		if ctx.Err() != nil {
			return fmt.Errorf("shutdown grace period expired before everything read was delivered; it will be sent again on restart: %w", err)
		}
		if sd.Draining() {
			return nil
		}
		if errors.Is(err, replication.ErrSlotLost) {
			if d.waitLostSlot(ctx, sd, err) != nil {
				return nil // stopping while waiting: nothing was read
			}
			attempt = 0
			continue
		}
		if err := d.fatal(err); err != nil {
			return err
		}
		if time.Since(started) > time.Minute {
			attempt = 1
		}
		d.report(err, nil)
		wait := d.retry.Delay(attempt)
		d.ready.set("session ended, restarting in %s: %v", wait.Round(time.Millisecond), err)
		d.log.Error("session ended, restarting", "slot", d.cfg.Postgres.Slot, "err", err, "retry_in", wait.Round(time.Millisecond))
		if err := sd.sleep(ctx, wait); errors.Is(err, errDraining) {
			return nil
		} else if err != nil {
			return fmt.Errorf("stopped while waiting to restart: %w", err)
		}
	}
}

// fatal returns the error that ends Run instead of a restart, if err is one.
func (d *Daemon) fatal(err error) error {
	if permanent(err) {
		return err
	}
	if !d.setUp.Load() {
		if perr := errclass.Permanent(err); perr != nil {
			d.report(perr, nil)
			return perr
		}
	}
	return nil
}

// OpenPool opens the connection pool for regular (non-replication) work.
func OpenPool(ctx context.Context, c *config.Config) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(c.Postgres.URL)
	if err != nil {
		return nil, fmt.Errorf("postgres.url: %w", err)
	}
	// Backfilled values are read as text: render them as the stream does.
	replication.SetSessionParams(cfg.ConnConfig.RuntimeParams)
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

// report sends err to Sentry (a no-op without sentry.dsn) with the slot,
// the LSN the stream confirmed and the batch settings as context.
func (d *Daemon) report(err error, extra map[string]any) {
	sentry.WithScope(func(s *sentry.Scope) {
		s.SetTag("slot", d.cfg.Postgres.Slot)
		s.SetTag("table", d.cfg.Postgres.Table)
		c := sentry.Context{
			"confirmed_lsn": pglogrepl.LSN(d.confirmed.Load()).String(),
			"batch_size":    d.cfg.Batch.Size,
			"streaming":     d.streaming.Load(),
		}
		for k, v := range extra {
			c[k] = v
		}
		s.SetContext("cdc", c)
		sentry.CaptureException(err)
	})
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

func sinkOptions(cfg *config.Config, log *slog.Logger, checkEveryRow bool, fence func() error) sink.Options {
	c := cfg.ClickHouse
	return sink.Options{
		Addr: c.Addr, Database: c.Database, Table: c.Table, Username: c.Username, Password: c.Password,
		DialTimeout: c.DialTimeout, Compression: c.LZ4(), CheckEveryRow: checkEveryRow, Fence: fence, Logger: log,
		Cluster: c.Cluster, InsertQuorum: c.Quorum(), InsertQuorumTimeout: c.InsertQuorumTimeout,
		DialContext: chclient.DialContext(c),
	}
}

// sinkOptions are the options of a sink fenced by the leader lease.
func (d *Daemon) sinkOptions(checkEveryRow bool) sink.Options {
	return sinkOptions(d.cfg, d.log, checkEveryRow, d.fence)
}

// reportingMarker reports rows ClickHouse rejected to Sentry as they are
// marked failed.
type reportingMarker struct {
	pipeline.Marker
	d *Daemon
}

// BeginMarking opens a transaction of markings when the marker is the
// store (pipeline.MarkingStarter).
func (m *reportingMarker) BeginMarking(ctx context.Context) (pipeline.OpenMarking, error) {
	s, ok := m.Marker.(*checkpoint.Store)
	if !ok {
		return nil, fmt.Errorf("markings in a transaction: %T cannot", m.Marker)
	}
	mk, err := s.BeginMarking(ctx)
	if err != nil {
		return nil, err
	}
	return mk, nil
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
