package replication

import (
	"context"
	"fmt"
	"strings"
)

// StandbyGuard is what the primary does to keep a logical consumer behind
// its synchronous standby.
//
// The hazard: a walsender decodes a transaction once it is in the primary's
// WAL, not once the synchronous standby confirmed it. If the primary dies in
// between, cdc may have delivered rows to ClickHouse that the promoted
// standby never committed, and their ids may be handed out again to other
// rows. PostgreSQL 17's synchronized_standby_slots makes the walsenders of
// failover slots wait for the listed physical slots; nothing does before 17.
type StandbyGuard struct {
	Server
	// SynchronousStandbyNames is the primary's synchronous_standby_names.
	SynchronousStandbyNames string
	// SynchronizedStandbySlots is synchronized_standby_slots (17+; "" before).
	SynchronizedStandbySlots string
}

// ReadStandbyGuard reads the settings of the server q is connected to.
func ReadStandbyGuard(ctx context.Context, q Querier) (StandbyGuard, error) {
	srv, err := ReadServer(ctx, q)
	if err != nil {
		return StandbyGuard{}, err
	}
	g := StandbyGuard{Server: srv}
	sql := `SELECT current_setting('synchronous_standby_names'), ''`
	if srv.VersionNum >= PG17 {
		sql = `SELECT current_setting('synchronous_standby_names'), current_setting('synchronized_standby_slots')`
	}
	if err := q.QueryRow(ctx, sql).Scan(&g.SynchronousStandbyNames, &g.SynchronizedStandbySlots); err != nil {
		return StandbyGuard{}, fmt.Errorf("postgres: read synchronous standby settings: %w", err)
	}
	g.SynchronousStandbyNames = strings.TrimSpace(g.SynchronousStandbyNames)
	g.SynchronizedStandbySlots = strings.TrimSpace(g.SynchronizedStandbySlots)
	return g, nil
}

// Hazard returns a one-line warning when cdc can get ahead of the
// synchronous standby, or "" when it cannot (or nothing is known to guard:
// no synchronous standby, or this is a standby itself). slot is cdc's slot
// and slotFailover its failover flag (nil when unknown, e.g. no slot yet).
func (g StandbyGuard) Hazard(slot string, slotFailover *bool) string {
	if g.InRecovery {
		return ""
	}
	const consequence = "after a failover ClickHouse may hold rows the new primary never committed, " +
		"and their ids may be reused; see docs/operations.md, PostgreSQL 17 failover slots"
	if g.VersionNum >= PG17 && g.SynchronizedStandbySlots != "" {
		if slotFailover != nil && !*slotFailover {
			return fmt.Sprintf("slot %q is not a failover slot: synchronized_standby_slots (%s) does not hold its walsender back "+
				"and standbys do not carry it; set postgres.failover_slot to auto or true", slot, g.SynchronizedStandbySlots)
		}
		return ""
	}
	if g.SynchronousStandbyNames == "" {
		return ""
	}
	if g.VersionNum < PG17 {
		return fmt.Sprintf("synchronous_standby_names is set (%s) but PostgreSQL %s cannot hold logical decoding back "+
			"until the standby confirms (synchronized_standby_slots needs 17+): cdc can deliver a transaction the standby does not have yet; %s",
			g.SynchronousStandbyNames, g.Version, consequence)
	}
	return fmt.Sprintf("synchronous_standby_names is set (%s) but synchronized_standby_slots is empty: cdc can deliver a transaction "+
		"the standby does not have yet; set synchronized_standby_slots to the standby's physical slot; %s",
		g.SynchronousStandbyNames, consequence)
}
