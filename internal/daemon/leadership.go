package daemon

// Leadership: one consumer per slot (docs/architecture.md §3.8) and fencing (§3.10).
//
// A session is one leadership term. It takes the slot's leader lease
// (internal/lease: an advisory lock plus a row in cdc_lease whose term grows
// with every holder), waiting as a hot standby while another instance holds
// it, renews the lease in the background and ends the term when it cannot.
// Every write of the term is fenced by the lease: the sink asks it before
// each insert (fence), and markings check the term inside their own
// statement (fencedStore). So once a successor may have started, this
// process writes nothing more, even before the term's context is cancelled.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/lease"
	"github.com/outbox-cdc/outbox-cdc/replication"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// session is one leadership term: it returns when the term ends (an error,
// a lease that could not be renewed, the graceful stop) or never begins
// (the graceful stop during the standby's wait).
func (d *Daemon) session(ctx context.Context, sd *Shutdown) error {
	lead, err := d.becomeLeader(ctx, sd)
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
	term, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // before Release: the renewals use the lease's connection
	defer cancel(nil)
	wg.Go(func() {
		if err := lead.Keep(term); err != nil {
			cancel(err)
		}
	})
	err = d.lead(term, sd)
	if cause := context.Cause(term); cause != nil && !errors.Is(cause, context.Canceled) && ctx.Err() == nil {
		return cause
	}
	return err
}

// becomeLeader takes the slot's leader lease, waiting as a standby while
// another instance holds it. It returns nil, nil when the graceful stop
// ends the wait.
func (d *Daemon) becomeLeader(ctx context.Context, sd *Shutdown) (*lease.Lease, error) {
	slot := d.cfg.Postgres.Slot
	waitLog := newOnceThenEvery(time.Minute)
	for waited := false; ; waited = true {
		lead, err := lease.TryAcquire(ctx, d.cfg.Postgres.URL, lease.Options{
			Name: "leader:" + slot, LockKey: replication.LeaderLockKey(slot), TTL: d.cfg.Replication.LeaderLease, Logger: d.log,
		})
		if err != nil {
			return nil, err
		}
		if lead != nil {
			if waited {
				d.log.Info("took over as leader", "slot", slot, "term", lead.Term())
			}
			return lead, nil
		}
		holder := replication.LeaderHolder(ctx, d.pool, slot)
		d.ready.set("standby: another instance leads slot %q: %s", slot, holder)
		// Once when the wait begins, then at most once a minute: a standby
		// may wait for weeks.
		if waitLog.allow() {
			d.log.Info("standby: another instance leads this slot; waiting", "slot", slot,
				"holder", holder, "retry_every", d.cfg.Replication.StandbyRetry, "waiting_for", waitLog.since())
		}
		if err := sd.sleep(ctx, d.cfg.Replication.StandbyRetry); errors.Is(err, errDraining) {
			return nil, nil
		} else if err != nil {
			return nil, err
		}
	}
}

// lead is the work of a term: the sink, the slot and its backfill, the
// leader's chores, and the stream.
func (d *Daemon) lead(ctx context.Context, sd *Shutdown) error {
	if err := d.openSink(ctx); err != nil {
		return err
	}
	if err := d.bootstrap(ctx, sd); err != nil || sd.Draining() {
		return err
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
	return d.stream(ctx, sd)
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

// openSink opens the term's sink once per process: it outlives terms (its
// inserts ask fence, which follows the current lease).
func (d *Daemon) openSink(ctx context.Context) error {
	if d.sink != nil {
		return nil
	}
	opts := d.sinkOptions(false)
	var err error
	if opts.SourceColumns, err = outboxColumns(ctx, d.pool, d.cfg.Postgres.Table); err != nil {
		return err
	}
	s, err := sink.Open(ctx, opts)
	if err != nil {
		return err
	}
	d.sink = s
	d.chReady.Store(s)
	m := s.Mode()
	d.log.Info("clickhouse: writing to "+d.cfg.ClickHouse.Database+"."+m.Table, "mode", m.String(),
		"engine", m.Engine, "replicas", m.Replicas, "insert_quorum", m.Quorum)
	return nil
}
