package status

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/errclass"
	"github.com/outbox-cdc/outbox-cdc/replication"
)

// Server versions (server_version_num) that added the columns read here.
const (
	pg13 = 130000 // pg_replication_slots.wal_status, safe_wal_size
	pg14 = 140000 // pg_replication_slots.two_phase; pg_stat_replication_slots
	pg16 = 160000 // pg_replication_slots.conflicting
	pg17 = 170000 // inactive_since, invalidation_reason, failover, synced
)

// slotRow receives one row of the slot query.
type slotRow struct {
	current            *string
	exists             bool
	plugin             *string
	slotType           *string
	database           *string
	temporary          *bool
	active             *bool
	activePID          *int32
	restartLSN         *string
	confirmedFlushLSN  *string
	walStatus          *string
	safeWALSize        *int64
	twoPhase           *bool
	conflicting        *bool
	inactiveSince      *time.Time
	invalidationReason *string
	failover           *bool
	synced             *bool
}

// slotColumn is one column of the slot query and the server version that has it.
type slotColumn struct {
	since int
	expr  string
	dest  func(*slotRow) any
}

// slotColumns lists, in order, what the slot query reads from
// pg_replication_slots (alias s).
var slotColumns = []slotColumn{
	{0, "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text", func(r *slotRow) any { return &r.current }},
	{0, "s.slot_name IS NOT NULL", func(r *slotRow) any { return &r.exists }},
	{0, "s.plugin::text", func(r *slotRow) any { return &r.plugin }},
	{0, "s.slot_type", func(r *slotRow) any { return &r.slotType }},
	{0, "s.database::text", func(r *slotRow) any { return &r.database }},
	{0, "s.temporary", func(r *slotRow) any { return &r.temporary }},
	{0, "s.active", func(r *slotRow) any { return &r.active }},
	{0, "s.active_pid", func(r *slotRow) any { return &r.activePID }},
	{0, "s.restart_lsn::text", func(r *slotRow) any { return &r.restartLSN }},
	{0, "s.confirmed_flush_lsn::text", func(r *slotRow) any { return &r.confirmedFlushLSN }},
	{pg13, "s.wal_status", func(r *slotRow) any { return &r.walStatus }},
	{pg13, "s.safe_wal_size", func(r *slotRow) any { return &r.safeWALSize }},
	{pg14, "s.two_phase", func(r *slotRow) any { return &r.twoPhase }},
	{pg16, "s.conflicting", func(r *slotRow) any { return &r.conflicting }},
	{pg17, "s.inactive_since", func(r *slotRow) any { return &r.inactiveSince }},
	{pg17, "s.invalidation_reason", func(r *slotRow) any { return &r.invalidationReason }},
	{pg17, "s.failover", func(r *slotRow) any { return &r.failover }},
	{pg17, "s.synced", func(r *slotRow) any { return &r.synced }},
}

// slotQuery returns the query reading the slot's row ($1 = slot name) on a
// server of the given server_version_num, with the columns that version
// has, and the destinations of those columns in row (none when row is nil).
// It always returns one row: the slot's columns are null when it does not
// exist.
func slotQuery(versionNum int, row *slotRow) (string, []any) {
	var exprs []string
	var dests []any
	for _, c := range slotColumns {
		if versionNum < c.since {
			continue
		}
		exprs = append(exprs, c.expr)
		if row != nil {
			dests = append(dests, c.dest(row))
		}
	}
	return "SELECT " + strings.Join(exprs, ",\n       ") +
		"\n  FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots AS s ON s.slot_name = $1", dests
}

// statsQuery returns the pg_stat_replication_slots query ($1 = slot name),
// or "" when the server (before 14) has no such view.
func statsQuery(versionNum int) string {
	if versionNum < pg14 {
		return ""
	}
	return `SELECT spill_txns, spill_count, spill_bytes, stream_txns, stream_count, stream_bytes,
       total_txns, total_bytes, stats_reset
  FROM pg_stat_replication_slots WHERE slot_name = $1`
}

// gatherPostgres fills r's PostgreSQL, slot and outbox parts. A non-OK code
// means the slot could not be read.
func gatherPostgres(ctx context.Context, o Options, r *Report) (Code, string) {
	s, code, reason := connectPostgres(ctx, o)
	if code == OK {
		defer s.close()
		code, reason = s.readSlot(ctx, o, r)
	}
	if code != OK {
		r.PostgresError = ptr(reason)
		return code, reason
	}
	s.readSlotStats(ctx, o, r)
	s.checkStandby(ctx, o, r)
	s.checkPublication(ctx, o, r)
	if err := gatherOutbox(ctx, s.conn, o, r); err != nil {
		r.OutboxError = ptr(oneLine(withFix(err)))
	}
	return OK, ""
}

// pgSession is the status command's one PostgreSQL connection. Each
// statement is bounded on the server (statement_timeout, set by readSlot)
// and, for a server or network that stops answering, by the context.
type pgSession struct {
	conn    *pgx.Conn
	where   string // host:port, for messages
	timeout time.Duration
}

// connectPostgres connects within the timeout (or the URL's shorter
// connect_timeout); a failure is Unreachable or, for a bad URL, Error.
func connectPostgres(ctx context.Context, o Options) (*pgSession, Code, string) {
	timeout := o.timeout()
	cfg, err := pgx.ParseConfig(o.PostgresURL)
	if err != nil {
		return nil, Error, "postgres.url: " + oneLine(err)
	}
	if cfg.ConnectTimeout <= 0 || cfg.ConnectTimeout > timeout {
		cfg.ConnectTimeout = timeout
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "outbox-cdc status"
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		msg := oneLine(err)
		if errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "timeout") {
			msg += fmt.Sprintf(" (connect timeout %s)", cfg.ConnectTimeout)
		}
		return nil, Unreachable, "postgres unreachable: " + msg // msg names the server
	}
	return &pgSession{conn: conn, where: fmt.Sprintf("%s:%d", cfg.Host, cfg.Port), timeout: timeout}, OK, ""
}

func (s *pgSession) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.conn.Close(ctx)
}

// query bounds one statement.
func (s *pgSession) query(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout+time.Second)
}

// failed classifies the failure of a statement that the report needs.
func (s *pgSession) failed(what string, err error) (Code, string) {
	if isConnError(err) {
		return Unreachable, "postgres unreachable: " + s.where + ": " + what + ": " + oneLine(err)
	}
	return Error, "postgres " + s.where + ": " + what + ": " + oneLine(err)
}

// readSlot reads the server's version and settings, then the slot's row
// with the columns that version has.
func (s *pgSession) readSlot(ctx context.Context, o Options, r *Report) (Code, string) {
	var (
		versionNum int
		version    string
		database   string
		inRecovery bool
		walLevel   string
	)
	qctx, cancel := s.query(ctx)
	err := s.conn.QueryRow(qctx, `SELECT current_setting('server_version_num')::int, current_setting('server_version'),
	       current_database(), pg_is_in_recovery(), current_setting('wal_level'), set_config('statement_timeout', $1, false)`,
		fmt.Sprint(s.timeout.Milliseconds())).Scan(&versionNum, &version, &database, &inRecovery, &walLevel, nil)
	cancel()
	if err != nil {
		return s.failed("read server version", err)
	}
	r.PostgresVersion, r.PostgresVersionNum, r.PostgresDatabase, r.InRecovery = &version, &versionNum, &database, &inRecovery
	r.WALLevel = &walLevel

	var row slotRow
	q, dests := slotQuery(versionNum, &row)
	qctx, cancel = s.query(ctx)
	err = s.conn.QueryRow(qctx, q, o.Slot).Scan(dests...)
	cancel()
	if err != nil {
		return s.failed(fmt.Sprintf("read slot %q", o.Slot), err)
	}
	fillSlot(r, &row)
	return OK, ""
}

// readSlotStats reads pg_stat_replication_slots (14+) for a logical slot;
// a failure is a warning.
func (s *pgSession) readSlotStats(ctx context.Context, o Options, r *Report) {
	if r.PostgresVersionNum == nil || !r.SlotExists || str(r.SlotType) != "logical" {
		return
	}
	sq := statsQuery(*r.PostgresVersionNum)
	if sq == "" {
		return
	}
	si := &r.SlotInfo
	qctx, cancel := s.query(ctx)
	err := s.conn.QueryRow(qctx, sq, o.Slot).Scan(&si.SpillTxns, &si.SpillCount, &si.SpillBytes,
		&si.StreamTxns, &si.StreamCount, &si.StreamBytes, &si.TotalTxns, &si.TotalBytes, &si.StatsReset)
	cancel()
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		r.Warnings = append(r.Warnings, "pg_stat_replication_slots unavailable: "+oneLine(err))
	}
}

// checkStandby warns of a consumer that can get ahead of the synchronous
// standby: a warning, not a state, so the exit code stays what the slot
// says.
func (s *pgSession) checkStandby(ctx context.Context, o Options, r *Report) {
	qctx, cancel := s.query(ctx)
	guard, err := replication.ReadStandbyGuard(qctx, s.conn)
	cancel()
	if err != nil {
		r.Warnings = append(r.Warnings, "synchronous standby settings unavailable: "+oneLine(err))
	} else if hazard := guard.Hazard(o.Slot, r.Failover); hazard != "" {
		r.Warnings = append(r.Warnings, "consumer can get ahead of the synchronous standby: "+hazard)
	}
}

// checkPublication checks the publication as `cdc run` does at the start
// of each term.
func (s *pgSession) checkPublication(ctx context.Context, o Options, r *Report) {
	if o.Publication == "" {
		return
	}
	schema, name := checkpoint.SplitTable(o.Table)
	qctx, cancel := s.query(ctx)
	err := replication.CheckPublication(qctx, s.conn, o.Publication, schema, name)
	cancel()
	if err != nil {
		r.PublicationError = ptr(strings.TrimPrefix(oneLine(err), "postgres: "))
	}
}

func fillSlot(r *Report, row *slotRow) {
	r.CurrentWALLSN = parseLSN(row.current)
	s := &r.SlotInfo
	s.SlotExists = row.exists
	if !row.exists {
		return
	}
	s.SlotType, s.Plugin, s.SlotDatabase = row.slotType, row.plugin, row.database
	s.Temporary, s.Active, s.ActivePID = row.temporary, row.active, row.activePID
	s.RestartLSN, s.ConfirmedFlushLSN = parseLSN(row.restartLSN), parseLSN(row.confirmedFlushLSN)
	s.WALStatus, s.SafeWALSize, s.TwoPhase, s.Conflicting = row.walStatus, row.safeWALSize, row.twoPhase, row.conflicting
	s.InactiveSince, s.InvalidationReason, s.Failover, s.Synced = row.inactiveSince, row.invalidationReason, row.failover, row.synced
	s.LagBytes = lsnDiff(r.CurrentWALLSN, s.ConfirmedFlushLSN)
	s.RetainedWALBytes = lsnDiff(r.CurrentWALLSN, s.RestartLSN)
}

func parseLSN(s *string) *LSN {
	if s == nil {
		return nil
	}
	v, err := pglogrepl.ParseLSN(*s)
	if err != nil {
		return nil
	}
	return ptr(LSN(v))
}

// lsnDiff returns a - b, at least 0 (on a standby the replay position can
// trail a synced slot's confirmed position), or nil when either is unknown.
func lsnDiff(a, b *LSN) *int64 {
	if a == nil || b == nil {
		return nil
	}
	if *a <= *b {
		return ptr(int64(0))
	}
	return ptr(int64(*a - *b))
}

// gatherOutbox counts the outbox by status. Both counts scan the table (no
// index covers status, so that marking rows processed stays a HOT update;
// see migration 0005); the processed count falls back to an estimate when it
// exceeds statement_timeout.
func gatherOutbox(ctx context.Context, conn *pgx.Conn, o Options, r *Report) error {
	schema, name := checkpoint.SplitTable(o.Table)
	table := pgx.Identifier{schema, name}.Sanitize()
	timeout := o.timeout() + time.Second

	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rows, err := conn.Query(qctx, `SELECT status, count(*), min(created_at),
	       extract(epoch FROM (now() AT TIME ZONE 'utc') - min(created_at))::float8
	  FROM `+table+` WHERE status <> 'processed' GROUP BY status`)
	if err != nil {
		return fmt.Errorf("count %s.%s: %w", schema, name, err)
	}
	byStatus := map[string]int64{}
	var unprocessed int64
	for rows.Next() {
		var (
			status  string
			n       int64
			oldest  *time.Time
			ageSecs *float64
		)
		if err := rows.Scan(&status, &n, &oldest, &ageSecs); err != nil {
			rows.Close()
			return fmt.Errorf("count %s.%s: %w", schema, name, err)
		}
		byStatus[status] = n
		unprocessed += n
		if status == "pending" {
			r.OldestPendingCreatedAt, r.OldestPendingAgeSeconds = oldest, ageSecs
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("count %s.%s: %w", schema, name, err)
	}

	var processed int64
	qctx2, cancel2 := context.WithTimeout(ctx, timeout)
	defer cancel2()
	err = conn.QueryRow(qctx2, `SELECT count(*) FROM `+table+` WHERE status = 'processed'`).Scan(&processed)
	estimated := false
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "57014" { // query_canceled: statement_timeout
		qctx3, cancel3 := context.WithTimeout(ctx, timeout)
		defer cancel3()
		var estimate int64
		err = conn.QueryRow(qctx3, `SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::regclass`, table).Scan(&estimate)
		processed = max(estimate-unprocessed, 0)
		estimated = true
	}
	if err != nil {
		return fmt.Errorf("count processed rows of %s.%s: %w", schema, name, err)
	}
	r.ProcessedEstimated = estimated
	byStatus["processed"] = processed
	r.OutboxByStatus = byStatus
	r.Pending, r.Failed, r.Processed = ptr(byStatus["pending"]), ptr(byStatus["failed"]), &processed
	gatherHOT(ctx, conn, o, r)
	return nil
}

// gatherHOT reads how many of the outbox's updates were HOT. A low ratio
// means marking writes every index and more WAL: a warning (the exit code
// does not change) that points at `cdc migrate`, which names the index.
func gatherHOT(ctx context.Context, conn *pgx.Conn, o Options, r *Report) {
	qctx, cancel := context.WithTimeout(ctx, o.timeout()+time.Second)
	defer cancel()
	schema, name := checkpoint.SplitTable(o.Table)
	var upd, hot int64
	err := conn.QueryRow(qctx, `SELECT coalesce(sum(n_tup_upd), 0)::bigint, coalesce(sum(n_tup_hot_upd), 0)::bigint
	  FROM pg_stat_user_tables WHERE relid = $1::regclass OR relid IN (SELECT relid FROM pg_partition_tree($1::regclass))`, pgx.Identifier{schema, name}.Sanitize()).Scan(&upd, &hot)
	if err != nil {
		r.Warnings = append(r.Warnings, "pg_stat_user_tables unavailable: "+oneLine(err))
		return
	}
	r.Updates, r.HOTUpdates = &upd, &hot
	if upd >= 1000 && hot*2 < upd {
		r.Warnings = append(r.Warnings, fmt.Sprintf("only %d of %d updates of the outbox were HOT: marking rows processed writes every index "+
			"(an index on status, updated_at or last_error, or pages without room; `cdc migrate` names such an index and how to drop it)", hot, upd))
	}
}

// isConnError reports whether err means the server could not be reached or
// stopped answering, as opposed to refusing a statement.
func isConnError(err error) bool {
	var pgErr *pgconn.PgError
	return !errors.As(err, &pgErr)
}

// withFix adds errclass's fix to a permanent error (a missing outbox:
// "run `cdc migrate`"), so status and `cdc run` name the same one.
func withFix(err error) error {
	if p := errclass.Classify(err); p.Category.Permanent() && p.Fix != "" {
		return fmt.Errorf("%w (%s)", err, p.Fix)
	}
	return err
}

// Backlog is what waits in the outbox: the rows not yet delivered and the
// ones ClickHouse rejected.
type Backlog struct {
	Pending, Failed int64
	// OldestPendingAgeSeconds is the server's UTC now minus the oldest
	// pending row's created_at; nil when nothing is pending.
	OldestPendingAgeSeconds *float64
}

// OutboxBacklog counts pending and failed rows of table ([schema.]name) as
// `cdc status` does; the daemon exports it as metrics.
func OutboxBacklog(ctx context.Context, q replication.Querier, table string) (Backlog, error) {
	schema, name := checkpoint.SplitTable(table)
	var b Backlog
	err := q.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed'),
	       extract(epoch FROM (now() AT TIME ZONE 'utc') - min(created_at) FILTER (WHERE status = 'pending'))::float8
	  FROM `+pgx.Identifier{schema, name}.Sanitize()+` WHERE status IN ('pending', 'failed')`).Scan(&b.Pending, &b.Failed, &b.OldestPendingAgeSeconds)
	if err != nil {
		return Backlog{}, fmt.Errorf("postgres: count the backlog of %s.%s: %w", schema, name, err)
	}
	return b, nil
}
