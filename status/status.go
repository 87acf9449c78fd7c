// Package status gathers what `cdc status` reports: the replication slot's
// state and lag, the outbox's counts by status and the age of its oldest
// pending row, and the ClickHouse table's row count and newest event.
//
// [Gather] connects to PostgreSQL with a connect timeout and a
// statement_timeout, so it always returns within a bounded time, and reads
// the columns the server has: it picks them by server_version_num, so it works
// on PostgreSQL 13 to 17 (wal_status and safe_wal_size from 13,
// pg_stat_replication_slots' spill and stream counters and two_phase from 14,
// conflicting from 16, inactive_since, invalidation_reason, failover and synced
// from 17). ClickHouse is queried concurrently; when it cannot be reached the
// report says so (clickhouse_error) without failing. The publication is
// checked as `cdc run` checks it (publication_error, a warning).
//
// The [Report] classifies the result into an exit [Code] with the slot rule
// `cdc run` follows too (replication.SlotHealth): 0 healthy,
// 2 PostgreSQL unreachable, 3 slot missing, 4 slot lost, 1 any other error,
// and 5 degraded: a usable slot with problems (no active consumer,
// ClickHouse unreachable, failed rows, pending rows older than
// MaxPendingAge, lag over LagWarnBytes, a publication or outbox cdc cannot
// deliver from). Its Verdict is ok only for code 0, and Problems name what
// is wrong.
// It marshals to JSON with snake_case keys, LSNs as "0/16B3748" strings and
// byte counts as integers; a value the server cannot provide (an older
// PostgreSQL, a missing slot, an unreachable server) is null, so every key is
// always present. Printing is left to the command.
package status

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/replication"
)

// Code is the exit code of `cdc status`.
type Code int

// Exit codes. They are a stable contract: scripts and monitoring rely on them.
const (
	OK          Code = 0 // the slot exists and can stream
	Error       Code = 1 // anything else: bad configuration, a failed query, a slot cdc cannot use
	Unreachable Code = 2 // PostgreSQL cannot be connected to (refused, timed out, authentication failed)
	SlotMissing Code = 3 // the replication slot does not exist
	SlotLost    Code = 4 // the slot was invalidated (wal_status = 'lost'): it can never stream again
	Degraded    Code = 5 // the slot is usable, but something is wrong: see Report.Problems
)

// String returns the state name used in the JSON report's "state" key.
func (c Code) String() string {
	switch c {
	case OK:
		return "ok"
	case Error:
		return "error"
	case Unreachable:
		return "postgres_unreachable"
	case SlotMissing:
		return "slot_missing"
	case SlotLost:
		return "slot_lost"
	case Degraded:
		return "degraded"
	}
	return fmt.Sprintf("code_%d", int(c))
}

// ErrPostgresUnreachable is wrapped by [Report.Err] when PostgreSQL could not
// be connected to. A missing slot wraps [replication.ErrSlotNotFound], a lost
// one [replication.ErrSlotLost].
var ErrPostgresUnreachable = errors.New("postgres unreachable")

// DefaultTimeout bounds connecting to each server and every statement.
const DefaultTimeout = 5 * time.Second

// DefaultMaxPendingAge is how long a row may wait as pending before the
// verdict counts it as a problem (--max-pending-age).
const DefaultMaxPendingAge = 5 * time.Minute

// Verdicts (Report.Verdict).
const (
	VerdictOK       = "ok"
	VerdictDegraded = "degraded"
)

// Options says what to inspect.
type Options struct {
	// PostgresURL is a libpq/pgx connection string (postgres.url).
	PostgresURL string
	// Table is the outbox as [schema.]name (postgres.table).
	Table string
	// Slot is the logical replication slot's name (postgres.slot).
	Slot string
	// Publication is the publication the slot streams (postgres.publication);
	// empty: not checked.
	Publication string
	// ClickHouse is the destination table's server.
	ClickHouse ClickHouseOptions
	// Timeout bounds connecting to each server and each statement (it is
	// PostgreSQL's statement_timeout); 0 means DefaultTimeout. A
	// connect_timeout in PostgresURL is kept when it is shorter.
	Timeout time.Duration
	// MaxPendingAge is how long the oldest pending row may wait before it
	// is a problem; 0 means DefaultMaxPendingAge.
	MaxPendingAge time.Duration
	// LagWarnBytes is replication.lag_warn_bytes: a slot lag above it is a
	// problem; 0 turns the check off.
	LagWarnBytes int64
}

// ClickHouseOptions locates the ClickHouse table.
type ClickHouseOptions struct {
	Addr     []string
	Database string
	Table    string
	// Cluster is clickhouse.cluster: with it, every replica's rows of
	// <Table>_local and replication queue are read too.
	Cluster  string
	Username string
	Password string
	// DialTimeout is used when it is shorter than Options.Timeout.
	DialTimeout time.Duration
	// DialContext, when set, opens the connection (clickhouse.tls, see
	// internal/chclient); nil dials plain TCP.
	DialContext func(ctx context.Context, addr string) (net.Conn, error)
}

func (o Options) maxPendingAge() time.Duration {
	if o.MaxPendingAge <= 0 {
		return DefaultMaxPendingAge
	}
	return o.MaxPendingAge
}

func (o Options) timeout() time.Duration {
	if o.Timeout <= 0 {
		return DefaultTimeout
	}
	return o.Timeout
}

// LSN is a WAL position; it marshals as PostgreSQL writes it ("0/16B3748").
type LSN uint64

func (l LSN) String() string { return pglogrepl.LSN(l).String() }

// MarshalText implements encoding.TextMarshaler.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := pglogrepl.ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = LSN(v)
	return nil
}

// Report is one observation. The embedded parts flatten into one JSON
// object. Pointer fields are null when the value is not available.
type Report struct {
	// Time is when the report was gathered (UTC).
	Time time.Time `json:"time"`
	// State is ExitCode's name: ok, postgres_unreachable, slot_missing,
	// slot_lost or error.
	State string `json:"state"`
	// ExitCode is the exit code of `cdc status` for this report.
	ExitCode Code `json:"exit_code"`
	// Reason is the one-line explanation of a non-zero ExitCode.
	Reason *string `json:"reason"`
	// Verdict is ok when cdc is delivering (exit code 0) and degraded
	// otherwise: any non-zero exit code, or a usable slot with Problems
	// (exit code 5).
	Verdict string `json:"verdict"`
	// Problems are what makes the verdict degraded, one line each: the
	// reason of a non-zero exit code 1-4, no active consumer, ClickHouse
	// unreachable, failed rows, pending rows older than the maximum age, a
	// lag above replication.lag_warn_bytes, a publication or an outbox cdc
	// cannot deliver from. Empty (never null) when the verdict is ok.
	Problems []string `json:"problems"`
	// Warnings are everything worth a look, problems included, plus what
	// does not make the verdict degraded (WAL close to
	// max_slot_wal_keep_size, an estimated count…).
	Warnings []string `json:"warnings"`

	PostgresInfo
	SlotInfo
	PublicationInfo
	OutboxInfo
	ClickHouseInfo

	sentinel error
}

// PostgresInfo describes the server.
type PostgresInfo struct {
	// PostgresVersion is server_version, e.g. "15.6 (Debian 15.6-0+deb12u1)".
	PostgresVersion *string `json:"postgres_version"`
	// PostgresVersionNum is server_version_num, e.g. 150006.
	PostgresVersionNum *int `json:"postgres_version_num"`
	// PostgresDatabase is the database postgres.url connects to.
	PostgresDatabase *string `json:"postgres_database"`
	// InRecovery is true on a standby; CurrentWALLSN is then the replay position.
	InRecovery *bool `json:"in_recovery"`
	// WALLevel is the server's wal_level: a logical slot needs logical.
	WALLevel *string `json:"wal_level"`
	// CurrentWALLSN is pg_current_wal_lsn() (pg_last_wal_replay_lsn() on a standby).
	CurrentWALLSN *LSN `json:"current_wal_lsn"`
	// PostgresError is why PostgreSQL could not be inspected.
	PostgresError *string `json:"postgres_error"`
}

// SlotInfo is the slot's row of pg_replication_slots and
// pg_stat_replication_slots, plus the lag derived from it.
type SlotInfo struct {
	SlotName   string  `json:"slot_name"`
	SlotExists bool    `json:"slot_exists"`
	SlotType   *string `json:"slot_type"`
	Plugin     *string `json:"plugin"`
	// SlotDatabase is the database the slot decodes.
	SlotDatabase *string `json:"slot_database"`
	Temporary    *bool   `json:"temporary"`
	Active       *bool   `json:"active"`
	// ActivePID is the walsender streaming from the slot; null when inactive.
	ActivePID         *int32 `json:"active_pid"`
	RestartLSN        *LSN   `json:"restart_lsn"`
	ConfirmedFlushLSN *LSN   `json:"confirmed_flush_lsn"`
	// LagBytes is current_wal_lsn - confirmed_flush_lsn: WAL not yet
	// confirmed by the consumer.
	LagBytes *int64 `json:"lag_bytes"`
	// RetainedWALBytes is current_wal_lsn - restart_lsn: WAL the server keeps
	// for the slot.
	RetainedWALBytes *int64 `json:"retained_wal_bytes"`
	// WALStatus is reserved, extended, unreserved or lost (PostgreSQL 13+).
	WALStatus *string `json:"wal_status"`
	// SafeWALSize is how much more WAL may be written before the slot is lost;
	// null when max_slot_wal_keep_size is -1 or the slot is lost (13+).
	SafeWALSize *int64 `json:"safe_wal_size"`
	TwoPhase    *bool  `json:"two_phase"`   // 14+
	Conflicting *bool  `json:"conflicting"` // 16+
	// InactiveSince is when the slot last stopped being streamed (17+).
	InactiveSince      *time.Time `json:"inactive_since"`
	InvalidationReason *string    `json:"invalidation_reason"` // 17+
	Failover           *bool      `json:"failover"`            // 17+
	Synced             *bool      `json:"synced"`              // 17+

	// pg_stat_replication_slots (14+).
	SpillTxns   *int64     `json:"spill_txns"`
	SpillCount  *int64     `json:"spill_count"`
	SpillBytes  *int64     `json:"spill_bytes"`
	StreamTxns  *int64     `json:"stream_txns"`
	StreamCount *int64     `json:"stream_count"`
	StreamBytes *int64     `json:"stream_bytes"`
	TotalTxns   *int64     `json:"total_txns"`
	TotalBytes  *int64     `json:"total_bytes"`
	StatsReset  *time.Time `json:"stats_reset"`
}

// PublicationInfo is the check `cdc run` makes of the publication at the
// start of each term (replication.CheckPublication).
type PublicationInfo struct {
	Publication string `json:"publication"`
	// PublicationError is why the publication would not deliver every
	// outbox row (with the fix); null when it does or was not checked. It
	// is a warning: it does not change the exit code.
	PublicationError *string `json:"publication_error"`
}

// OutboxInfo counts the outbox's rows.
type OutboxInfo struct {
	OutboxTable string `json:"outbox_table"`
	Pending     *int64 `json:"pending"`
	Failed      *int64 `json:"failed"`
	Processed   *int64 `json:"processed"`
	// ProcessedEstimated is true when counting processed rows took longer
	// than the timeout and Processed is estimated from pg_class.reltuples.
	ProcessedEstimated bool `json:"processed_estimated"`
	// OutboxByStatus counts every status value present, including ones
	// other than pending, failed and processed.
	OutboxByStatus map[string]int64 `json:"outbox_by_status"`
	// OldestPendingCreatedAt is min(created_at) of pending rows (the column
	// holds UTC without a time zone).
	OldestPendingCreatedAt *time.Time `json:"oldest_pending_created_at"`
	// OldestPendingAgeSeconds is the server's UTC now minus OldestPendingCreatedAt.
	OldestPendingAgeSeconds *float64 `json:"oldest_pending_age_seconds"`
	OutboxError             *string  `json:"outbox_error"`
	// Updates and HOTUpdates are pg_stat_user_tables' n_tup_upd and
	// n_tup_hot_upd of the outbox (summed over its partitions) since the
	// statistics were last reset. Nearly all updates are cdc's markings,
	// which should be HOT (no index names a column they set; see
	// migrations.FindMarkingIndexes); null when unavailable.
	Updates    *int64 `json:"updates"`
	HOTUpdates *int64 `json:"hot_updates"`
}

// ClickHouseInfo describes the destination table.
type ClickHouseInfo struct {
	ClickHouseTable   string  `json:"clickhouse_table"`
	ClickHouseVersion *string `json:"clickhouse_version"`
	ClickHouseRows    *uint64 `json:"clickhouse_rows"`
	// ClickHouseNewestEventTime is max(event_date_time); null when the table is empty.
	ClickHouseNewestEventTime *time.Time `json:"clickhouse_newest_event_time"`
	// ClickHouseNewestInsertedAt is max(_inserted_at), when the table has that column.
	ClickHouseNewestInsertedAt *time.Time `json:"clickhouse_newest_inserted_at"`
	// ClickHouseError is why ClickHouse could not be inspected; it does not
	// change the exit code.
	ClickHouseError *string `json:"clickhouse_error"`
	// ClickHouseReplicas lists every replica of clickhouse.cluster with its
	// rows and replication queue; null without a cluster.
	ClickHouseReplicas []ReplicaInfo `json:"clickhouse_replicas"`
}

// ReplicaInfo is one replica of clickhouse.cluster: its rows of
// <table>_local and its row of system.replicas. Values it could not read
// are null and Error says why.
type ReplicaInfo struct {
	Shard   uint32 `json:"shard"`
	Replica uint32 `json:"replica"`
	// Host is host_name:port from system.clusters.
	Host string  `json:"host"`
	Rows *uint64 `json:"rows"`
	// QueueSize is system.replicas.queue_size: fetches and merges waiting.
	QueueSize      *uint64 `json:"queue_size"`
	InsertsInQueue *uint64 `json:"inserts_in_queue"`
	// AbsoluteDelaySeconds is how far behind the newest part the replica is.
	AbsoluteDelaySeconds *uint64 `json:"absolute_delay_seconds"`
	// ReadOnly is true when the replica lost ZooKeeper (or Keeper): it takes
	// no inserts.
	ReadOnly       *bool   `json:"is_readonly"`
	ActiveReplicas *uint64 `json:"active_replicas"`
	TotalReplicas  *uint64 `json:"total_replicas"`
	Error          *string `json:"error"`
}

// Err returns nil when ExitCode is OK, else an error whose message is
// Reason. It wraps ErrPostgresUnreachable, replication.ErrSlotNotFound or
// replication.ErrSlotLost as fits.
func (r *Report) Err() error {
	if r.ExitCode == OK {
		return nil
	}
	reason := r.ExitCode.String()
	if r.Reason != nil {
		reason = *r.Reason
	}
	return &reportError{reason: reason, sentinel: r.sentinel}
}

type reportError struct {
	reason   string
	sentinel error
}

func (e *reportError) Error() string { return e.reason }
func (e *reportError) Unwrap() error { return e.sentinel }

// Gather inspects PostgreSQL and ClickHouse. It always returns a report;
// failures are in its ExitCode, Reason and *_error fields. It returns within
// a few multiples of the timeout even when a server does not answer, and
// sooner when ctx ends.
func Gather(ctx context.Context, o Options) *Report {
	schema, name := checkpoint.SplitTable(o.Table)
	r := &Report{
		Time:     time.Now().UTC(),
		Warnings: []string{},
		SlotInfo: SlotInfo{SlotName: o.Slot},
		PublicationInfo: PublicationInfo{
			Publication: o.Publication,
		},
		OutboxInfo: OutboxInfo{
			OutboxTable: schema + "." + name,
		},
		ClickHouseInfo: ClickHouseInfo{
			ClickHouseTable: o.ClickHouse.Database + "." + o.ClickHouse.Table,
		},
	}

	var (
		wg sync.WaitGroup
		ch ClickHouseInfo
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		ch = gatherClickHouse(ctx, o)
	}()
	code, reason := gatherPostgres(ctx, o, r)
	wg.Wait()
	r.ClickHouseInfo = ch

	if code == OK {
		code, reason = ClassifySlot(r.SlotInfo, str(r.PostgresDatabase))
		if code == SlotMissing && r.WALLevel != nil {
			reason += walLevelNote(*r.WALLevel)
		}
	}
	r.setCode(code, reason)
	r.Warnings = append(r.Warnings, warnings(r)...)
	r.Problems = problems(r, o)
	r.Verdict = VerdictOK
	if len(r.Problems) > 0 {
		r.Verdict = VerdictDegraded
		if r.ExitCode == OK {
			r.setCode(Degraded, strings.Join(r.Problems, "; "))
		}
	}
	return r
}

// walLevelNote says whether `cdc run` can create the missing slot.
func walLevelNote(level string) string {
	if level == "logical" {
		return " (wal_level is logical: `cdc run` can create it)"
	}
	return fmt.Sprintf(" (and wal_level is %s: set wal_level = logical and restart PostgreSQL before `cdc run` can create it)", level)
}

// problems lists what makes the verdict degraded (see Report.Problems).
func problems(r *Report, o Options) []string {
	p := []string{}
	if r.ExitCode != OK && r.Reason != nil {
		p = append(p, *r.Reason)
	}
	s := r.SlotInfo
	if r.ExitCode == OK && s.SlotExists && s.Active != nil && !*s.Active {
		p = append(p, fmt.Sprintf("no active consumer: no process is streaming from slot %q (is `cdc run` running?)", s.SlotName))
	}
	if r.ExitCode == OK && o.LagWarnBytes > 0 && s.LagBytes != nil && *s.LagBytes > o.LagWarnBytes {
		p = append(p, fmt.Sprintf("slot lag %d bytes is over replication.lag_warn_bytes (%d)", *s.LagBytes, o.LagWarnBytes))
	}
	if r.PublicationError != nil {
		p = append(p, *r.PublicationError)
	}
	if r.OutboxError != nil {
		p = append(p, "outbox unavailable: "+*r.OutboxError)
	}
	if r.Failed != nil && *r.Failed > 0 {
		p = append(p, fmt.Sprintf("%d failed rows: ClickHouse rejected them (see the outbox's last_error, then `cdc retry-failed`)", *r.Failed))
	}
	if age := r.OldestPendingAgeSeconds; age != nil && *age > o.maxPendingAge().Seconds() {
		p = append(p, fmt.Sprintf("%d pending rows, the oldest waiting %s (over --max-pending-age %s)", str64(r.Pending),
			(time.Duration(*age*float64(time.Second))).Round(time.Second), o.maxPendingAge()))
	}
	if r.ClickHouseError != nil {
		p = append(p, "clickhouse unavailable: "+*r.ClickHouseError)
	}
	return append(p, replicaProblems(r.ClickHouseReplicas)...)
}

// replicaProblems names the replicas of a cluster that cannot take part in
// a quorum insert: unreachable, or read-only (ZooKeeper lost).
func replicaProblems(replicas []ReplicaInfo) []string {
	var p []string
	for _, r := range replicas {
		switch {
		case r.Error != nil:
			p = append(p, fmt.Sprintf("clickhouse replica %s (shard %d) unavailable: %s", r.Host, r.Shard, *r.Error))
		case r.ReadOnly != nil && *r.ReadOnly:
			p = append(p, fmt.Sprintf("clickhouse replica %s (shard %d) is read-only: it lost ZooKeeper and takes no inserts", r.Host, r.Shard))
		}
	}
	return p
}

func str64(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

func (r *Report) setCode(code Code, reason string) {
	r.ExitCode = code
	r.State = code.String()
	r.Reason = nil
	if code != OK {
		r.Reason = &reason
	}
	switch code {
	case Unreachable:
		r.sentinel = ErrPostgresUnreachable
	case SlotMissing:
		r.sentinel = replication.ErrSlotNotFound
	case SlotLost:
		r.sentinel = replication.ErrSlotLost
	default:
		r.sentinel = nil
	}
}

// ClassifySlot decides the exit code from the slot's state, given the
// database postgres.url connects to ("" when unknown). The rule is
// replication's SlotHealth, the one `cdc run` follows too: SlotMissing when
// the slot does not exist; SlotLost when it was invalidated (wal_status
// 'lost', conflicting on 16+, an invalidation_reason on 17+); Error when it
// exists but cdc cannot stream from it (a physical slot, another plugin,
// another database: slot names are unique in the whole cluster); OK
// otherwise, 'extended' and 'unreserved' included (they are warnings).
func ClassifySlot(s SlotInfo, database string) (Code, string) {
	h := s.replication(database).Health()
	switch h.Class {
	case replication.SlotUsable:
		return OK, ""
	case replication.SlotMissing:
		return SlotMissing, "slot missing: " + h.Reason
	case replication.SlotLost:
		return SlotLost, "slot lost: " + h.Reason
	default:
		return Error, "slot unusable: " + h.Reason
	}
}

// replication returns the slot as the classifier reads it.
func (s SlotInfo) replication(database string) replication.SlotInfo {
	r := replication.SlotInfo{
		Name: s.SlotName, Exists: s.SlotExists, SlotType: str(s.SlotType), Plugin: str(s.Plugin),
		Database: str(s.SlotDatabase), WALStatus: str(s.WALStatus), CurrentDatabase: database,
		Conflicting: s.Conflicting, InvalidationReason: s.InvalidationReason,
		InactiveSince: s.InactiveSince, Failover: s.Failover, Synced: s.Synced,
	}
	if s.Active != nil {
		r.Active = *s.Active
	}
	if s.RestartLSN != nil {
		r.RestartLSN = pglogrepl.LSN(*s.RestartLSN)
	}
	if s.ConfirmedFlushLSN != nil {
		r.ConfirmedFlush = pglogrepl.LSN(*s.ConfirmedFlushLSN)
	}
	return r
}

func warnings(r *Report) []string {
	var w []string
	s := r.SlotInfo
	if s.SlotExists && r.ExitCode == OK {
		if h := s.replication(str(r.PostgresDatabase)).Health(); h.Warning != "" {
			w = append(w, h.Warning)
		}
		if s.Active != nil && !*s.Active {
			w = append(w, "no process is streaming from the slot (is `cdc run` running?)")
		}
	}
	if r.PublicationError != nil {
		w = append(w, *r.PublicationError)
	}
	if r.OutboxError != nil {
		w = append(w, "outbox unavailable: "+*r.OutboxError)
	}
	if r.ProcessedEstimated {
		w = append(w, "processed is an estimate (pg_class.reltuples): counting took longer than the timeout")
	}
	if r.ClickHouseError != nil {
		w = append(w, "clickhouse unavailable: "+*r.ClickHouseError)
	}
	return w
}

// oneLine flattens an error message (pgconn reports several hosts' attempts
// on separate lines) so a reason stays on one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func ptr[T any](v T) *T { return &v }
