package replication

// Failover slots (PostgreSQL 17+). A logical slot created with FAILOVER true
// is copied to standbys that run with sync_replication_slots = on; after a
// promotion the copy on the new primary carries on from the confirmed
// position, so cdc neither re-creates the slot nor backfills. Before 17 the
// slot exists only on the primary and dies with it.
//
// postgres.failover_slot (auto | true | false) decides whether cdc asks for
// the option; [WantFailoverSlot] owns that rule.

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PG17 is the server_version_num from which logical slots can be failover
// slots (and synchronized_standby_slots exists).
const PG17 = 170000

// Server is what the failover rules need to know about the server.
type Server struct {
	VersionNum int    // server_version_num, e.g. 170010
	Version    string // server_version, e.g. "17.10"
	InRecovery bool   // a standby
}

// ReadServer reads the server's version and whether it is a standby.
func ReadServer(ctx context.Context, q Querier) (Server, error) {
	var s Server
	err := q.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('server_version'), pg_is_in_recovery()`).
		Scan(&s.VersionNum, &s.Version, &s.InRecovery)
	if err != nil {
		return Server{}, fmt.Errorf("postgres: read server version: %w", err)
	}
	return s, nil
}

// ErrFailoverUnsupported means postgres.failover_slot is true but the server
// cannot give the slot the failover option. It is a set-up error: retrying
// does not help.
var ErrFailoverUnsupported = errors.New("failover slots unsupported by this server")

// Values of postgres.failover_slot.
const (
	FailoverAuto = "auto"
	FailoverOn   = "true"
	FailoverOff  = "false"
)

// WantFailoverSlot says whether cdc's slot must be a failover slot, given
// postgres.failover_slot (mode) and the server. Only a 17+ primary can have
// one (a standby refuses FAILOVER on its own slots): auto asks for it there
// and nowhere else; true makes any other server an error naming the key;
// false never asks.
func WantFailoverSlot(mode string, srv Server) (bool, error) {
	supported := srv.VersionNum >= PG17 && !srv.InRecovery
	switch mode {
	case FailoverOff:
		return false, nil
	case FailoverAuto, "":
		return supported, nil
	case FailoverOn:
		if srv.VersionNum < PG17 {
			return false, fmt.Errorf("%w: postgres.failover_slot is true but PostgreSQL %s (server_version_num %d) has no failover slots (17+): "+
				"set postgres.failover_slot to auto or false, or upgrade the server", ErrFailoverUnsupported, srv.Version, srv.VersionNum)
		}
		if srv.InRecovery {
			return false, fmt.Errorf("%w: postgres.failover_slot is true but postgres.url reaches a standby, where slots cannot be failover slots: "+
				"point postgres.url at the primary (e.g. target_session_attrs=read-write)", ErrFailoverUnsupported)
		}
		return true, nil
	}
	return false, fmt.Errorf("postgres.failover_slot must be one of auto, true, false, got %q", mode)
}

// CreateFailoverSlot creates a pgoutput failover slot and exports its
// snapshot, like [CreateSlot]. pglogrepl's CreateReplicationSlot has no
// FAILOVER option, so the command is written here, in the option-list
// syntax of PostgreSQL 15+ (FAILOVER itself needs 17).
func CreateFailoverSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (CreatedSlot, error) {
	sql := fmt.Sprintf("CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)", pgx.Identifier{slot}.Sanitize())
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return CreatedSlot{}, fmt.Errorf("postgres: create failover replication slot %q: %w", slot, err)
	}
	// One row: slot_name, consistent_point, snapshot_name, output_plugin.
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) < 3 {
		return CreatedSlot{}, fmt.Errorf("postgres: create failover replication slot %q: unexpected result shape", slot)
	}
	row := results[0].Rows[0]
	lsn, err := pglogrepl.ParseLSN(string(row[1]))
	if err != nil {
		return CreatedSlot{}, fmt.Errorf("postgres: create failover replication slot %q: consistent point %q: %w", slot, row[1], err)
	}
	return CreatedSlot{ConsistentPoint: lsn, Snapshot: string(row[2])}, nil
}

// SlotFailover reads pg_replication_slots.failover of the slot: false on a
// server before 17, which has no such thing.
func SlotFailover(ctx context.Context, q Querier, srv Server, slot string) (bool, error) {
	if srv.VersionNum < PG17 {
		return false, nil
	}
	var on bool
	err := q.QueryRow(ctx, `SELECT failover FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&on)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, fmt.Errorf("%w: %q", ErrSlotNotFound, slot)
	}
	if err != nil {
		return false, fmt.Errorf("postgres: read failover of slot %q: %w", slot, err)
	}
	return on, nil
}

// EnableFailover turns an existing slot into a failover slot with
// ALTER_REPLICATION_SLOT (a replication command: conn must be a replication
// connection). The slot must not be streamed meanwhile: an active slot
// returns ErrSlotInUse.
func EnableFailover(ctx context.Context, conn *pgconn.PgConn, slot string) error {
	sql := fmt.Sprintf("ALTER_REPLICATION_SLOT %s (FAILOVER true)", pgx.Identifier{slot}.Sanitize())
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			return fmt.Errorf("%w: %s", ErrSlotInUse, pgErr.Message)
		}
		return fmt.Errorf("postgres: make slot %q a failover slot: %w", slot, err)
	}
	return nil
}
