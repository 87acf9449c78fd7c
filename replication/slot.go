package replication

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is what slot inspection needs from a pgx connection or pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SlotInfo is a row of pg_replication_slots.
type SlotInfo struct {
	Name           string
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
}

// ErrSlotNotFound is returned by LookupSlot when the slot does not exist.
var ErrSlotNotFound = errors.New("replication slot does not exist")

// ErrSlotLost means the server removed WAL the slot still needed: changes
// in that gap are gone from the stream, so streaming must not resume.
var ErrSlotLost = errors.New("replication slot has lost required WAL")

// LookupSlot reads the slot's state.
func LookupSlot(ctx context.Context, q Querier, slot string) (SlotInfo, error) {
	var (
		info                SlotInfo
		plugin, db, status  *string
		pid                 *int32
		confirmed, restartL *string
		lag, retained       *int64
	)
	err := q.QueryRow(ctx, `SELECT slot_name, plugin, database, active, active_pid,
	       confirmed_flush_lsn::text, restart_lsn::text, wal_status,
	       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
	       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
	  FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&info.Name, &plugin, &db, &info.Active, &pid, &confirmed, &restartL, &status, &lag, &retained)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotInfo{}, fmt.Errorf("%w: %q", ErrSlotNotFound, slot)
	}
	if err != nil {
		return SlotInfo{}, fmt.Errorf("postgres: look up slot %q: %w", slot, err)
	}
	info.Plugin, info.Database, info.WALStatus = deref(plugin), deref(db), deref(status)
	if pid != nil {
		info.ActivePID = *pid
	}
	if lag != nil {
		info.LagBytes = *lag
	}
	if retained != nil {
		info.RetainedBytes = *retained
	}
	if confirmed != nil {
		info.ConfirmedFlush, _ = pglogrepl.ParseLSN(*confirmed)
	}
	if restartL != nil {
		info.RestartLSN, _ = pglogrepl.ParseLSN(*restartL)
	}
	return info, nil
}

// CheckUsable returns ErrSlotLost (with the recovery to follow) when the
// slot can no longer stream every change.
func (s SlotInfo) CheckUsable() error {
	if s.WALStatus == "lost" || (s.RestartLSN == 0 && s.WALStatus != "") {
		return fmt.Errorf("%w: slot %q has wal_status %q; rows committed while it was behind are no longer in WAL. "+
			"Recover: stop every cdc instance, drop the slot (SELECT pg_drop_replication_slot('%s')), and start cdc again: "+
			"it re-creates the slot and backfills every pending and failed row", ErrSlotLost, s.Name, s.WALStatus, s.Name)
	}
	if s.Plugin != "" && s.Plugin != "pgoutput" {
		return fmt.Errorf("postgres: slot %q uses plugin %q, not pgoutput", s.Name, s.Plugin)
	}
	return nil
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
		return fmt.Sprintf("pid %d", pid)
	}
	return fmt.Sprintf("pid %d (%s from %s, connected %s)", pid, app, addr, started.UTC().Format(time.RFC3339))
}

// Leadership is a session advisory lock that makes one daemon per slot the
// leader: only the leader creates the slot, backfills and streams. It is
// released when its connection closes, including when the process dies.
type Leadership struct {
	conn *pgx.Conn
	key  string
}

// TryLead tries to take the lock for slot. It returns nil, nil when another
// session holds it.
func TryLead(ctx context.Context, url, slot string) (*Leadership, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse postgres.url: %w", err)
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "outbox-cdc"
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres %s:%d: connect: %w", cfg.Host, cfg.Port, err)
	}
	key := "outbox-cdc:" + slot
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, key).Scan(&got); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("postgres %s:%d: take leader lock: %w", cfg.Host, cfg.Port, err)
	}
	if !got {
		conn.Close(ctx)
		return nil, nil
	}
	return &Leadership{conn: conn, key: key}, nil
}

// LeaderHolder describes the session holding the leader lock for slot.
func LeaderHolder(ctx context.Context, q Querier, slot string) string {
	var pid int32
	err := q.QueryRow(ctx, `SELECT l.pid FROM pg_locks l
	  WHERE l.locktype = 'advisory' AND l.granted AND l.objid = (hashtext($1)::bigint & 4294967295)::oid LIMIT 1`,
		"outbox-cdc:"+slot).Scan(&pid)
	if err != nil {
		return "another instance"
	}
	return Holder(ctx, q, pid)
}

// Check verifies the lock's connection is alive (the lock with it).
func (l *Leadership) Check(ctx context.Context) error {
	if err := l.conn.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: leader lock connection lost: %w", err)
	}
	return nil
}

// Release gives up leadership.
func (l *Leadership) Release(ctx context.Context) {
	_ = l.conn.Close(ctx)
}

// IsConnError reports whether err means the server could not be reached or
// dropped the connection (as opposed to refusing a statement).
func IsConnError(err error) bool {
	var pgErr *pgconn.PgError
	return !errors.As(err, &pgErr)
}
