package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/outbox-cdc/outbox-cdc/replication"
)

// lostSlotLogEvery is how often the ERROR about a lost slot is repeated
// while the process waits for an operator.
const lostSlotLogEvery = time.Minute

// waitLostSlot keeps the process up while the slot is lost (invalidated:
// it can never stream again) and says so — cdc_slot_lost 1, /readyz 503
// with the reason, an ERROR with the recovery at most once a minute —
// until an operator acts. Exiting instead would show the gauge for a
// fraction of a second per restart, which 15 s scrapes rarely see.
//
// It returns nil once the slot is gone (the operator dropped it: the next
// session re-creates it and backfills every row not yet processed) or
// usable again, and an error when the process is asked to stop. The
// session that found the slot lost has ended, so this instance holds no
// lease while it waits, and nothing is written.
func (d *Daemon) waitLostSlot(ctx context.Context, sd *Shutdown, lost error) error {
	slot := d.cfg.Postgres.Slot
	reason := lost.Error()
	d.slotLost.Store(&reason)
	defer d.slotLost.Store(nil)
	d.metrics.SlotLost.Set(1)
	d.report(lost, nil)
	var logged time.Time
	for {
		if time.Since(logged) >= lostSlotLogEvery {
			d.log.Error("replication slot lost: not streaming until it is dropped (cdc then re-creates it and backfills)",
				"slot", slot, "err", lost, "repeats_every", lostSlotLogEvery)
			logged = time.Now()
		}
		if err := sd.sleep(ctx, d.cfg.Replication.StandbyRetry); err != nil {
			return err
		}
		info, err := replication.LookupSlot(ctx, d.pool, slot)
		switch {
		case errors.Is(err, replication.ErrSlotNotFound):
			d.metrics.SlotLost.Set(0)
			d.log.Info("the lost slot was dropped: re-creating it and backfilling every row not yet processed", "slot", slot)
			return nil
		case err != nil:
			// PostgreSQL unreachable: the slot is still lost as far as we know.
			continue
		case info.Health().Class != replication.SlotLost:
			d.metrics.SlotLost.Set(0)
			d.log.Info("the slot is no longer lost: streaming again", "slot", slot, "wal_status", info.WALStatus)
			return nil
		}
	}
}
