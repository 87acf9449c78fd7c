package daemon

// Bootstrap: what a term does before it streams. It checks the publication
// (before the slot: a publication that leaves outbox rows out would let the
// slot move past them, §3.1), finds or creates the slot, and delivers the
// rows that predate it (§3.4).
//
// A new slot exports a snapshot; the rows pending or failed in it are
// listed (backfill.Prepare) on a second connection before the creating
// connection sends anything else (§8), and the list is committed with the
// slot's state. A slot that exists without that state was interrupted
// between the two: nothing was streamed from it, so it is dropped and
// created again. The backfill works through the list, which survives a
// crash, and records when it is done. Every backfilled row is looked up in
// ClickHouse before it is inserted (§3.11: a re-created slot's rows may be
// stored already). failover.go makes the slot a failover slot where wanted.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/outbox-cdc/outbox-cdc/backfill"
	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/replication"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// bootstrap makes the slot ready to stream from: checked, created if
// needed, and its backfill delivered. It returns nil early when the
// graceful stop interrupts the backfill (it resumes on the next start).
func (d *Daemon) bootstrap(ctx context.Context, sd *Shutdown) error {
	schema, name := checkpoint.SplitTable(d.cfg.Postgres.Table)
	if err := replication.CheckPublication(ctx, d.pool, d.cfg.Postgres.Publication, schema, name); err != nil {
		return err
	}
	state, err := d.prepareSlot(ctx)
	if err != nil {
		return err
	}
	if state.Done {
		return nil
	}
	return d.backfill(ctx, sd, state)
}

// prepareSlot returns the backfill state of a usable slot of this
// database, creating the slot (again) when needed.
func (d *Daemon) prepareSlot(ctx context.Context) (backfill.State, error) {
	slotName := d.cfg.Postgres.Slot
	slot, err := replication.LookupSlot(ctx, d.pool, slotName)
	switch {
	case errors.Is(err, replication.ErrSlotNotFound):
		return d.createSlot(ctx)
	case err != nil:
		return backfill.State{}, err
	}
	if err := slot.CheckUsable(); err != nil {
		return backfill.State{}, err
	}
	var db string
	if err := d.pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		return backfill.State{}, fmt.Errorf("postgres: current database: %w", err)
	}
	if slot.Database != db {
		return backfill.State{}, fmt.Errorf("postgres: replication slot %q belongs to database %q, not %q: choose another postgres.slot", slotName, slot.Database, db)
	}
	if err := d.ensureFailoverSlot(ctx); err != nil {
		return backfill.State{}, err
	}
	state, err := backfill.LoadState(ctx, d.pool, slotName)
	if err != nil {
		return backfill.State{}, err
	}
	if state.Exists && !state.Creating() {
		return state, nil
	}
	// The slot was created but its snapshot's backfill list was never
	// committed: nothing was streamed from it, so re-create it.
	d.log.Warn("slot exists without recorded state (interrupted creation): re-creating it", "slot", slotName)
	if err := replication.DropSlot(ctx, d.pool, slotName); err != nil {
		return backfill.State{}, err
	}
	return d.createSlot(ctx)
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

// backfill delivers the rows listed when the slot was created, then records
// that it is done. Stopping midway is safe: the list survives.
func (d *Daemon) backfill(ctx context.Context, sd *Shutdown, state backfill.State) error {
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
	d.ready.set("backfilling: delivering the rows that predate slot %q", slotName)
	d.log.Info("backfill: delivering rows that predate the slot", "slot", slotName)
	dl := d.startDelivery(ctx, w, nil, false)
	start := time.Now()
	n, err := backfill.Run(ctx, d.pool, slotName, d.cfg.Postgres.Table, state.ConsistentLSN, d.cfg.Batch.Size, func(r sink.Row) error {
		if err := dl.hand(ctx, sd.Drain(), &r); err != nil {
			return err
		}
		d.metrics.Backfilled.Inc()
		return nil
	})
	if sd.Draining() {
		err = nil // the graceful stop: deliver what was read
	}
	if err := dl.finish(err); err != nil {
		return err
	}
	if sd.Draining() {
		d.log.Info("backfill interrupted by shutdown; it resumes on the next start", "slot", slotName, "rows", n)
		return nil
	}
	if err := backfill.MarkDone(ctx, d.pool, slotName); err != nil {
		return err
	}
	d.log.Info("backfill done", "slot", slotName, "rows", n, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}
