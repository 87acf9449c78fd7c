package daemon

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-cdc/outbox-cdc/replication"
)

// Failover slots (postgres.failover_slot). At the start of every leadership
// term, the slot cdc is about to use is made a failover slot where that is
// wanted: created with the option, or upgraded with ALTER_REPLICATION_SLOT
// when it exists without it. A slot carried over by a promotion already has
// it and is left alone. The term also logs the standby guard's hazard.

// failoverPolicy reads the server and says whether cdc's slot must be a
// failover slot; it also returns the primary's standby guard.
func (d *Daemon) failoverPolicy(ctx context.Context) (bool, replication.StandbyGuard, error) {
	guard, err := replication.ReadStandbyGuard(ctx, d.pool)
	if err != nil {
		return false, replication.StandbyGuard{}, err
	}
	want, err := replication.WantFailoverSlot(d.cfg.Postgres.FailoverSlot, guard.Server)
	return want, guard, err
}

// createReplicationSlot creates cdc's slot on conn, with the failover
// option when the policy wants it.
func (d *Daemon) createReplicationSlot(ctx context.Context, conn *pgconn.PgConn) (replication.CreatedSlot, error) {
	slot := d.cfg.Postgres.Slot
	want, guard, err := d.failoverPolicy(ctx)
	if err != nil {
		return replication.CreatedSlot{}, err
	}
	d.warnStandbyGuard(guard, want)
	if !want {
		return replication.CreateSlot(ctx, conn, slot)
	}
	created, err := replication.CreateFailoverSlot(ctx, conn, slot)
	if err == nil {
		d.log.Info("the slot is a failover slot: standbys with sync_replication_slots carry it through a promotion", "slot", slot)
	}
	return created, err
}

// ensureFailoverSlot upgrades the existing slot to a failover slot when the
// policy wants it and it is not one yet.
func (d *Daemon) ensureFailoverSlot(ctx context.Context) error {
	slot := d.cfg.Postgres.Slot
	want, guard, err := d.failoverPolicy(ctx)
	if err != nil {
		return err
	}
	is, err := replication.SlotFailover(ctx, d.pool, guard.Server, slot)
	if err != nil {
		return err
	}
	if want && !is {
		conn, err := replication.Connect(ctx, d.cfg.Postgres.URL)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		if err := replication.EnableFailover(ctx, conn, slot); err != nil {
			return err
		}
		is = true
		d.log.Info("made the existing slot a failover slot (ALTER_REPLICATION_SLOT): standbys with sync_replication_slots carry it through a promotion",
			"slot", slot)
	}
	d.warnStandbyGuard(guard, is)
	return nil
}

func (d *Daemon) warnStandbyGuard(guard replication.StandbyGuard, slotFailover bool) {
	if hazard := guard.Hazard(d.cfg.Postgres.Slot, &slotFailover); hazard != "" {
		d.log.Warn("consumer can get ahead of the synchronous standby: "+hazard, "slot", d.cfg.Postgres.Slot)
	}
}

// permanent reports whether err is a set-up error that no retry can fix,
// so `cdc run` stops instead of retrying.
func permanent(err error) bool {
	return errors.Is(err, replication.ErrFailoverUnsupported)
}
