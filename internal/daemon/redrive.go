package daemon

// Re-drive: delivery again of rows marked failed (docs/architecture.md, §3.7), by
// `cdc retry-failed` and by the leader's periodic re-drive. It runs the
// stream's pipeline (startDelivery) over rows read from the outbox, under
// the retry:<table> lease that serialises and fences every re-drive of one
// outbox (§3.10), with every row looked up in ClickHouse before it is
// inserted (§3.2).

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-cdc/outbox-cdc/backfill"
	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/lease"
	"github.com/outbox-cdc/outbox-cdc/pipeline"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// ErrRetryBusy means another re-drive of the same outbox is running: only
// one of retry-failed, the periodic re-drive and replay writes at a time.
var ErrRetryBusy = errors.New("another re-drive (retry-failed, a periodic re-drive or replay) is running on this outbox")

// RetryResult counts what a re-drive did.
type RetryResult struct {
	Read        int64 // failed rows read
	StillFailed int64 // of those, rejected again
}

// RetryFailed re-sends rows marked failed (with fewer than maxAttempts
// attempts when maxAttempts > 0) through the normal pipeline: rows
// ClickHouse accepts become processed, the others stay failed with the new
// error and one more attempt. Every row is looked up by id and fingerprint
// in ClickHouse before it is inserted, and re-drives of one outbox hold a
// lease (internal/lease), so running it again after a crash, or while a
// re-drive whose lock session was killed is still running, inserts nothing
// twice. It is `cdc retry-failed`; the daemon's periodic re-drive is
// Daemon.redriveOnce.
func RetryFailed(ctx context.Context, cfg *config.Config, pool *pgxpool.Pool, log *slog.Logger, maxAttempts int) (RetryResult, error) {
	return redriveFailed(ctx, cfg, pool, log, nil, maxAttempts, nil)
}

// redriveOnce is one round of the daemon's periodic re-drive: fenced by the
// leader lease too, and counted in the process's counters (not its
// gauges: they are the stream's).
func (d *Daemon) redriveOnce(ctx context.Context) (RetryResult, error) {
	return redriveFailed(ctx, d.cfg, d.pool, d.log, workObserver{d.metrics}, d.cfg.Failed.MaxAttempts, d.lease.Load())
}

// redriveFailed is RetryFailed reporting to obs (nil: nobody), fenced by
// leader too when it is set.
func redriveFailed(ctx context.Context, cfg *config.Config, pool *pgxpool.Pool, log *slog.Logger, obs pipeline.Observer,
	maxAttempts int, leader *lease.Lease) (RetryResult, error) {
	var res RetryResult
	h, err := holdRedrive(ctx, cfg, log, leader)
	if err != nil {
		return res, err
	}
	defer h.release()
	ctx, fence, terms := h.ctx, h.fence, h.terms

	s, err := sink.Open(ctx, sinkOptions(cfg, log, true, fence))
	if err != nil {
		return res, err
	}
	defer s.Close()
	// Inserts of a re-drive that lost its lease may still be running.
	if err := s.Recover(ctx, 0); err != nil {
		return res, err
	}

	counting := &countingMarker{Marker: checkpoint.NewStore(pool, cfg.Postgres.Table).Fenced(terms...)}
	dl := startDelivery(ctx, cfg, s, counting, nil, obs, log, false)
	res.Read, err = backfill.Failed(ctx, pool, cfg.Postgres.Table, maxAttempts, cfg.Batch.Size, func(r sink.Row) error {
		return dl.hand(ctx, nil, &r)
	})
	if err := dl.finish(err); err != nil {
		return res, leaseLost(ctx, err)
	}
	res.StillFailed = counting.failed
	return res, nil
}

// redrive is what a re-drive of an outbox (retry-failed, the periodic
// re-drive, replay) holds while it writes: the retry:<table> lease, renewed
// in the background, which serialises re-drives of one outbox and fences
// them (a re-drive whose lock session was killed stops writing before a
// successor may start), plus the daemon's leader lease when it runs inside
// the daemon.
type redrive struct {
	// ctx ends when the lease cannot be kept.
	ctx   context.Context
	fence func() error
	terms []checkpoint.Term
	// release stops keeping the lease and gives it up.
	release func()
}

// holdRedrive takes the retry:<table> lease, or fails with ErrRetryBusy.
func holdRedrive(ctx context.Context, cfg *config.Config, log *slog.Logger, leader *lease.Lease) (*redrive, error) {
	own, err := lease.TryAcquire(ctx, cfg.Postgres.URL, lease.Options{
		Name: "retry:" + cfg.Postgres.Table, LockKey: "outbox-cdc:retry:" + cfg.Postgres.Table,
		TTL: cfg.Replication.LeaderLease, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if own == nil {
		return nil, ErrRetryBusy
	}
	ctx, cancel := context.WithCancelCause(ctx)
	var keeper sync.WaitGroup
	keeper.Go(func() {
		if err := own.Keep(ctx); err != nil {
			cancel(err)
		}
	})
	leases := []*lease.Lease{own}
	if leader != nil {
		leases = append(leases, leader)
	}
	h := &redrive{ctx: ctx, release: func() {
		cancel(nil)
		keeper.Wait()
		own.Release(context.Background())
	}}
	h.fence = func() error {
		for _, l := range leases {
			if err := l.Check(); err != nil {
				return err
			}
		}
		return nil
	}
	h.terms = make([]checkpoint.Term, len(leases))
	for i, l := range leases {
		h.terms[i] = checkpoint.Term{Lease: l.Name(), Term: l.Term()}
	}
	return h, nil
}

// leaseLost returns why ctx ended when a lease it was bound to was lost
// (holdRedrive), or else err: a re-drive stopped by a lost lease says so.
func leaseLost(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// countingMarker counts rows marked failed again.
type countingMarker struct {
	pipeline.Marker
	failed int64
}

func (c *countingMarker) MarkFailed(ctx context.Context, f []checkpoint.Failure, xids []uint32) error {
	if err := c.Marker.MarkFailed(ctx, f, xids); err != nil {
		return err
	}
	c.failed += int64(len(f))
	return nil
}

// retryLoop re-drives failed rows every interval while the session lasts.
func (d *Daemon) retryLoop(ctx context.Context) {
	everyAfter(ctx, d.cfg.Failed.RetryInterval, func(ctx context.Context) {
		res, err := d.redriveOnce(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			d.log.Warn("periodic retry of failed rows", "err", err)
		case res.Read > 0:
			d.log.Info("re-drove failed rows", "rows", res.Read, "still_failed", res.StillFailed)
		}
	})
}
