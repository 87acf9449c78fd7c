package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Querier is what slot inspection needs from a pgx connection or pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SlotInfo is a row of pg_replication_slots.
type SlotInfo struct {
	Name string
	// Exists is false for a slot of that name that does not exist (LookupSlot
	// returns ErrSlotNotFound instead; `cdc status` classifies it).
	Exists bool
	// SlotType is logical or physical.
	SlotType       string
	Plugin         string
	Database       string
	Active         bool
	ActivePID      int32
	ConfirmedFlush pglogrepl.LSN
	RestartLSN     pglogrepl.LSN
	// WALStatus is reserved, extended, unreserved or lost (PostgreSQL 13+).
	WALStatus string
	// LagBytes is pg_current_wal_lsn() - confirmed_flush_lsn; RetainedBytes
	// is pg_current_wal_lsn() - restart_lsn, the WAL the slot keeps.
	LagBytes, RetainedBytes int64

	// CurrentDatabase is the database of the connection that looked the
	// slot up (postgres.url's): a slot of another database is not ours.
	CurrentDatabase string
	// ServerVersionNum is server_version_num of the server read.
	ServerVersionNum int

	// Columns newer servers have; nil where the server has not.
	Conflicting        *bool      // 16+: invalidated by a conflict with recovery
	InvalidationReason *string    // 17+: wal_removed, rows_removed, wal_level_insufficient, idle_timeout (18)
	InactiveSince      *time.Time // 17+: when the slot last stopped being streamed
	Failover           *bool      // 17+: synced to standbys (failover slot)
	Synced             *bool      // 17+: a standby's copy of a primary's failover slot
}

// ErrSlotNotFound is returned by LookupSlot when the slot does not exist.
var ErrSlotNotFound = errors.New("replication slot does not exist")

// ErrSlotLost means the server removed WAL the slot still needed: changes
// in that gap are gone from the stream, so streaming must not resume.
var ErrSlotLost = errors.New("replication slot has lost required WAL")

// Server versions (server_version_num) that added the slot columns read.
const (
	pg13 = 130000 // wal_status; pg_publication.pubviaroot
	pg15 = 150000 // row filters and column lists of publications
	pg16 = 160000 // conflicting
	pg17 = 170000 // inactive_since, invalidation_reason, failover, synced
)

// slotColumn is one column LookupSlot reads, from the server version on
// that has it.
type slotColumn struct {
	since int
	expr  string
	dest  func(*slotRow) any
}

// slotRow receives LookupSlot's query; pointers take SQL nulls.
type slotRow struct {
	name, slotType                string
	plugin, db, walStatus         *string
	active                        bool
	pid                           *int32
	confirmed, restart            *string
	lag, retained                 *int64
	conflicting, failover, synced *bool
	invalidationReason            *string
	inactiveSince                 *time.Time
}

var slotColumns = []slotColumn{
	{0, "slot_name", func(r *slotRow) any { return &r.name }},
	{0, "slot_type", func(r *slotRow) any { return &r.slotType }},
	{0, "plugin::text", func(r *slotRow) any { return &r.plugin }},
	{0, "database::text", func(r *slotRow) any { return &r.db }},
	{0, "active", func(r *slotRow) any { return &r.active }},
	{0, "active_pid", func(r *slotRow) any { return &r.pid }},
	{0, "confirmed_flush_lsn::text", func(r *slotRow) any { return &r.confirmed }},
	{0, "restart_lsn::text", func(r *slotRow) any { return &r.restart }},
	{0, "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint", func(r *slotRow) any { return &r.lag }},
	{0, "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint", func(r *slotRow) any { return &r.retained }},
	{pg13, "wal_status", func(r *slotRow) any { return &r.walStatus }},
	{pg16, "conflicting", func(r *slotRow) any { return &r.conflicting }},
	{pg17, "invalidation_reason", func(r *slotRow) any { return &r.invalidationReason }},
	{pg17, "inactive_since", func(r *slotRow) any { return &r.inactiveSince }},
	{pg17, "failover", func(r *slotRow) any { return &r.failover }},
	{pg17, "synced", func(r *slotRow) any { return &r.synced }},
}

// lookupSlotQuery returns the slot query ($1 = slot name) with the columns
// a server of versionNum has, and where to scan them.
func lookupSlotQuery(versionNum int, row *slotRow) (string, []any) {
	var exprs []string
	var dests []any
	for _, c := range slotColumns {
		if versionNum >= c.since {
			exprs = append(exprs, c.expr)
			dests = append(dests, c.dest(row))
		}
	}
	return "SELECT " + strings.Join(exprs, ", ") + " FROM pg_replication_slots WHERE slot_name = $1", dests
}

// LookupSlot reads the slot's state, with the columns the server's version
// has (see SlotInfo), and the database postgres.url connects to.
func LookupSlot(ctx context.Context, q Querier, slot string) (SlotInfo, error) {
	info := SlotInfo{Name: slot}
	if err := q.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_database()`).
		Scan(&info.ServerVersionNum, &info.CurrentDatabase); err != nil {
		return SlotInfo{}, fmt.Errorf("postgres: look up slot %q: server version: %w", slot, err)
	}
	var row slotRow
	query, dests := lookupSlotQuery(info.ServerVersionNum, &row)
	err := q.QueryRow(ctx, query, slot).Scan(dests...)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotInfo{}, fmt.Errorf("%w: %q", ErrSlotNotFound, slot)
	}
	if err != nil {
		return SlotInfo{}, fmt.Errorf("postgres: look up slot %q: %w", slot, err)
	}
	info.Exists, info.Name, info.SlotType, info.Active = true, row.name, row.slotType, row.active
	info.Plugin, info.Database, info.WALStatus = deref(row.plugin), deref(row.db), deref(row.walStatus)
	if row.pid != nil {
		info.ActivePID = *row.pid
	}
	if row.lag != nil {
		info.LagBytes = *row.lag
	}
	if row.retained != nil {
		info.RetainedBytes = *row.retained
	}
	if row.confirmed != nil {
		info.ConfirmedFlush, _ = pglogrepl.ParseLSN(*row.confirmed)
	}
	if row.restart != nil {
		info.RestartLSN, _ = pglogrepl.ParseLSN(*row.restart)
	}
	info.Conflicting, info.InvalidationReason, info.InactiveSince = row.conflicting, row.invalidationReason, row.inactiveSince
	info.Failover, info.Synced = row.failover, row.synced
	return info, nil
}

// CheckUsable returns the slot's problem when cdc cannot stream every change
// from it (see SlotHealth): ErrSlotLost (with the recovery to follow) when it
// was invalidated, ErrSlotUnusable when it is not a pgoutput slot of this
// database.
func (s SlotInfo) CheckUsable() error {
	return s.Health().Err()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// HeartbeatPrefix is the prefix of the logical decoding messages EmitHeartbeat
// writes; the stream reader measures their delay.
const HeartbeatPrefix = "cdc"

// EmitHeartbeat writes a transactional logical decoding message carrying the
// current time. It travels the stream like an outbox transaction, so it keeps
// the slot moving and shows end-to-end liveness.
func EmitHeartbeat(ctx context.Context, q Querier, now time.Time) error {
	var lsn string
	err := q.QueryRow(ctx, `SELECT pg_logical_emit_message(true, $1, $2)::text`, HeartbeatPrefix, now.UTC().Format(time.RFC3339Nano)).Scan(&lsn)
	if err != nil {
		return fmt.Errorf("postgres: emit heartbeat: %w", err)
	}
	return nil
}

// DropSlot drops the slot through a regular (non-replication) connection.
func DropSlot(ctx context.Context, q Querier, slot string) error {
	var ok bool
	err := q.QueryRow(ctx, `SELECT pg_drop_replication_slot($1) IS NULL`, slot).Scan(&ok)
	if err != nil {
		return fmt.Errorf("postgres: drop slot %q: %w", slot, err)
	}
	return nil
}

// Holder describes the process streaming from a slot, for standby logs.
func Holder(ctx context.Context, q Querier, pid int32) string {
	if pid == 0 {
		return "unknown process"
	}
	var app, addr string
	var started time.Time
	err := q.QueryRow(ctx, `SELECT coalesce(application_name, ''), coalesce(host(client_addr), 'local'), backend_start
	  FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&app, &addr, &started)
	if err != nil {
		return fmt.Sprintf("backend_pid %d", pid)
	}
	return fmt.Sprintf("backend_pid %d (%s from %s, connected %s)", pid, app, addr, started.UTC().Format(time.RFC3339))
}

// LeaderLockKey is the advisory lock key of slot's leader lease: the
// daemon takes it (internal/lease hashes it with hashtext) and LeaderHolder
// looks for it.
func LeaderLockKey(slot string) string { return "outbox-cdc:" + slot }

// LeaderHolder describes the session holding the leader lock for slot (the
// advisory lock of the daemon's leader lease, internal/lease).
func LeaderHolder(ctx context.Context, q Querier, slot string) string {
	var pid int32
	// Advisory locks are per database: the same key held in another
	// database (another outbox with the same slot name) is not our leader.
	// pg_try_advisory_lock(bigint) shows its key split in classid (high 32
	// bits) and objid (low 32 bits), with objsubid 1.
	err := q.QueryRow(ctx, `SELECT l.pid FROM pg_locks l
	  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
	    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
	    AND l.classid = ((hashtext($1)::bigint >> 32) & 4294967295)::oid
	    AND l.objid = (hashtext($1)::bigint & 4294967295)::oid LIMIT 1`,
		LeaderLockKey(slot)).Scan(&pid)
	if err != nil {
		return "another instance"
	}
	return Holder(ctx, q, pid)
}
