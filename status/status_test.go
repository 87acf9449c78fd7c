package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/migrations"
	"github.com/outbox-cdc/outbox-cdc/replication"
)

// env is a fresh PostgreSQL database and ClickHouse database, both migrated.
type env struct {
	pgURL string
	pg    *pgx.Conn
	chDB  string
	ch    clickhouse.Conn
	opts  Options
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := &env{pgURL: testenv.NewPostgresDB(t), chDB: testenv.NewClickHouseDB(t)}
	var err error
	if e.pg, err = pgx.Connect(ctx, e.pgURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.pg.Close(context.Background()) })
	// pg_current_wal_lsn() is the WAL written so far: with the test server's
	// synchronous_commit = off, commit here so the lag is visible at once.
	if _, err := e.pg.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.ApplyPostgres(ctx, e.pg, migrations.Postgres{Table: "public.event_outbox", Publication: "cdc_outbox"}); err != nil {
		t.Fatal(err)
	}
	addr := testenv.ClickHouseAddr(t)
	if e.ch, err = clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.ch.Close() })
	if _, err := migrations.ApplyClickHouse(ctx, e.ch, migrations.ClickHouse{Database: e.chDB, Table: "events"}); err != nil {
		t.Fatal(err)
	}
	e.opts = Options{
		PostgresURL: e.pgURL,
		Table:       "public.event_outbox",
		Slot:        uniqueSlot(t, e.pgURL),
		ClickHouse:  ClickHouseOptions{Addr: []string{addr}, Database: e.chDB, Table: "events", Username: "default", DialTimeout: 5 * time.Second},
		Timeout:     5 * time.Second,
	}
	return e
}

// uniqueSlot names the test's slot after its database: slot names are
// unique in the whole cluster, which tests running in parallel share.
func uniqueSlot(t *testing.T, pgURL string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(pgURL)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}

func (e *env) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.pg.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (e *env) createSlot(t *testing.T) {
	t.Helper()
	e.exec(t, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, e.opts.Slot)
}

// insertOutbox inserts n rows with the given status, created age ago.
func (e *env) insertOutbox(t *testing.T, status string, n int, age time.Duration) {
	t.Helper()
	e.exec(t, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version, status, created_at)
		SELECT 'test.event', now(), 'test', '{"k": 1}', 1, $1, (now() AT TIME ZONE 'utc') - make_interval(secs => $2)
		  FROM generate_series(1, $3)`, status, age.Seconds(), n)
}

func gather(t *testing.T, o Options) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := Gather(ctx, o)
	b, _ := json.MarshalIndent(r, "", "  ")
	t.Logf("report: %s", b)
	return r
}

func TestGatherHealthy(t *testing.T) {
	e := newEnv(t)
	e.insertOutbox(t, "processed", 4, time.Hour)
	e.createSlot(t)
	e.insertOutbox(t, "pending", 2, time.Minute)
	e.insertOutbox(t, "pending", 1, 2*time.Hour) // the oldest pending row
	e.insertOutbox(t, "failed", 2, 3*time.Hour)  // older, but not pending
	e.insertOutbox(t, "on_hold", 1, 0)

	newest := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	ctx := context.Background()
	batch, err := e.ch.PrepareBatch(ctx, "INSERT INTO `"+e.chDB+"`.events (id, event_type, event_date_time, environment, event_context, metadata_version, created_at, _lsn, _seq)")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		at := newest.Add(-time.Duration(i) * time.Hour)
		if err := batch.Append(int64(i+1), "test.event", at, "test", "{}", int64(1), at, uint64(100+i), uint64(0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}

	before := time.Now()
	r := gather(t, e.opts)
	if took := time.Since(before); took > 5*time.Second {
		t.Errorf("Gather took %s", took)
	}
	// The slot is usable, but nobody streams from it, rows failed and
	// pending rows are two hours old: degraded (exit 5), each named.
	if r.ExitCode != Degraded || r.State != "degraded" || r.Verdict != VerdictDegraded || r.Reason == nil || r.Err() == nil {
		t.Fatalf("exit %d %q verdict %q reason %v err %v, want degraded", r.ExitCode, r.State, r.Verdict, r.Reason, r.Err())
	}
	for _, want := range []string{"no active consumer", "2 failed rows", "3 pending rows, the oldest waiting 2h0m0s (over --max-pending-age 5m0s)"} {
		if !hasProblem(r, want) {
			t.Errorf("problems %q lack %q", r.Problems, want)
		}
	}
	if len(r.Problems) != 3 {
		t.Errorf("problems %q, want 3", r.Problems)
	}

	// Server facts, checked against the server itself.
	var versionNum int
	var current, confirmed, restart string
	if err := e.pg.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&versionNum); err != nil {
		t.Fatal(err)
	}
	if r.PostgresVersionNum == nil || *r.PostgresVersionNum != versionNum || r.PostgresVersion == nil || *r.PostgresVersion == "" {
		t.Errorf("postgres version %v %v, want %d", r.PostgresVersion, r.PostgresVersionNum, versionNum)
	}
	if err := e.pg.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text, confirmed_flush_lsn::text, restart_lsn::text
		FROM pg_replication_slots WHERE slot_name = $1`, e.opts.Slot).Scan(&current, &confirmed, &restart); err != nil {
		t.Fatal(err)
	}
	if r.ConfirmedFlushLSN == nil || r.ConfirmedFlushLSN.String() != confirmed {
		t.Errorf("confirmed_flush_lsn %v, want %s", r.ConfirmedFlushLSN, confirmed)
	}
	if r.RestartLSN == nil || r.RestartLSN.String() != restart {
		t.Errorf("restart_lsn %v, want %s", r.RestartLSN, restart)
	}
	cur, _ := pglogrepl.ParseLSN(current)
	if r.CurrentWALLSN == nil || uint64(*r.CurrentWALLSN) > uint64(cur) {
		t.Fatalf("current_wal_lsn %v, want at most %s (read later)", r.CurrentWALLSN, current)
	}
	// Rows were inserted after the slot was created: the slot lags.
	wantLag := int64(*r.CurrentWALLSN - *r.ConfirmedFlushLSN)
	if r.LagBytes == nil || *r.LagBytes != wantLag || wantLag <= 0 {
		t.Errorf("lag_bytes %v, want current - confirmed = %d > 0", r.LagBytes, wantLag)
	}
	if r.RetainedWALBytes == nil || *r.RetainedWALBytes != int64(*r.CurrentWALLSN-*r.RestartLSN) {
		t.Errorf("retained_wal_bytes %v, want %d", r.RetainedWALBytes, int64(*r.CurrentWALLSN-*r.RestartLSN))
	}

	if !r.SlotExists || r.SlotName != e.opts.Slot || *r.SlotType != "logical" || *r.Plugin != "pgoutput" || *r.Active || r.ActivePID != nil {
		t.Errorf("slot %+v", r.SlotInfo)
	}
	if r.SlotDatabase == nil || r.PostgresDatabase == nil || *r.SlotDatabase != *r.PostgresDatabase {
		t.Errorf("slot database %v, connected to %v", r.SlotDatabase, r.PostgresDatabase)
	}
	if versionNum >= pg13 && (r.WALStatus == nil || *r.WALStatus != "reserved") {
		t.Errorf("wal_status %v, want reserved", r.WALStatus)
	}
	if r.SafeWALSize != nil { // the test server has max_slot_wal_keep_size = -1
		t.Errorf("safe_wal_size %d, want null", *r.SafeWALSize)
	}
	if versionNum >= pg14 {
		if r.SpillTxns == nil || r.StreamTxns == nil || r.TotalTxns == nil || r.TwoPhase == nil || *r.TwoPhase {
			t.Errorf("14+ fields missing: spill %v stream %v total %v two_phase %v", r.SpillTxns, r.StreamTxns, r.TotalTxns, r.TwoPhase)
		}
	}
	if versionNum < pg17 && (r.InactiveSince != nil || r.InvalidationReason != nil || r.Failover != nil || r.Synced != nil) {
		t.Errorf("17+ fields set on %d", versionNum)
	}
	if versionNum < pg16 && r.Conflicting != nil {
		t.Errorf("16+ field conflicting set on %d", versionNum)
	}

	// Outbox.
	want := map[string]int64{"pending": 3, "failed": 2, "processed": 4, "on_hold": 1}
	if fmt.Sprint(r.OutboxByStatus) != fmt.Sprint(want) {
		t.Errorf("outbox_by_status %v, want %v", r.OutboxByStatus, want)
	}
	if *r.Pending != 3 || *r.Failed != 2 || *r.Processed != 4 || r.ProcessedEstimated || r.OutboxError != nil {
		t.Errorf("pending %d failed %d processed %d (estimated %v), error %v", *r.Pending, *r.Failed, *r.Processed, r.ProcessedEstimated, r.OutboxError)
	}
	if r.OldestPendingAgeSeconds == nil || *r.OldestPendingAgeSeconds < 7200 || *r.OldestPendingAgeSeconds > 7260 {
		t.Errorf("oldest_pending_age_seconds %v, want about 7200", r.OldestPendingAgeSeconds)
	}
	if r.OldestPendingCreatedAt == nil || time.Since(*r.OldestPendingCreatedAt) < 2*time.Hour-time.Minute {
		t.Errorf("oldest_pending_created_at %v", r.OldestPendingCreatedAt)
	}

	// ClickHouse.
	if r.ClickHouseError != nil || r.ClickHouseRows == nil || *r.ClickHouseRows != 5 {
		t.Errorf("clickhouse rows %v error %v, want 5", r.ClickHouseRows, r.ClickHouseError)
	}
	if r.ClickHouseNewestEventTime == nil || !r.ClickHouseNewestEventTime.Equal(newest) {
		t.Errorf("clickhouse_newest_event_time %v, want %s", r.ClickHouseNewestEventTime, newest)
	}
	if r.ClickHouseNewestInsertedAt == nil || time.Since(*r.ClickHouseNewestInsertedAt) > time.Minute {
		t.Errorf("clickhouse_newest_inserted_at %v, want about now", r.ClickHouseNewestInsertedAt)
	}
	if r.ClickHouseVersion == nil || *r.ClickHouseVersion == "" || r.ClickHouseTable != e.chDB+".events" {
		t.Errorf("clickhouse version %v table %s", r.ClickHouseVersion, r.ClickHouseTable)
	}
	if !hasWarning(r, "no process is streaming") {
		t.Errorf("warnings %q: want the inactive slot mentioned", r.Warnings)
	}

	// The JSON contract (DESIGN.md §4): snake_case keys, LSNs as strings,
	// byte counts as integers.
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"slot_name", "active", "active_pid", "confirmed_flush_lsn", "current_wal_lsn", "lag_bytes",
		"wal_status", "pending", "failed", "processed", "restart_lsn", "retained_wal_bytes", "safe_wal_size", "spill_txns",
		"spill_bytes", "stream_txns", "stream_bytes", "inactive_since", "postgres_version", "oldest_pending_age_seconds",
		"clickhouse_rows", "clickhouse_newest_event_time", "clickhouse_error", "state", "exit_code"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	lsnRE := regexp.MustCompile(`^[0-9A-F]+/[0-9A-F]+$`)
	for _, k := range []string{"confirmed_flush_lsn", "current_wal_lsn", "restart_lsn"} {
		if s, ok := m[k].(string); !ok || !lsnRE.MatchString(s) {
			t.Errorf("%s = %#v, want an LSN string like 0/16B3748", k, m[k])
		}
	}
	if m["confirmed_flush_lsn"] != confirmed {
		t.Errorf("confirmed_flush_lsn %v, want %s", m["confirmed_flush_lsn"], confirmed)
	}
	if v, ok := m["lag_bytes"].(float64); !ok || int64(v) != *r.LagBytes {
		t.Errorf("lag_bytes = %#v, want the integer %d", m["lag_bytes"], *r.LagBytes)
	}
	if m["active_pid"] != nil || m["active"] != false || m["slot_name"] != e.opts.Slot {
		t.Errorf("active %v active_pid %v slot_name %v", m["active"], m["active_pid"], m["slot_name"])
	}
}

// A consumer streaming from the slot makes it active, with the walsender's pid.
func TestGatherActiveSlot(t *testing.T) {
	e := newEnv(t)
	e.createSlot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	repl, err := pgconn.Connect(ctx, e.pgURL+"&replication=database")
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close(context.Background())
	if err := pglogrepl.StartReplication(ctx, repl, e.opts.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'cdc_outbox'"},
	}); err != nil {
		t.Fatal(err)
	}
	pid := int32(repl.PID())

	deadline := time.Now().Add(10 * time.Second)
	for {
		r := gather(t, e.opts)
		if r.Active != nil && *r.Active {
			if r.ActivePID == nil || *r.ActivePID != pid {
				t.Fatalf("active_pid %v, want the walsender %d", r.ActivePID, pid)
			}
			if hasProblem(r, "no active consumer") || hasWarning(r, "no process is streaming") {
				t.Fatalf("exit %d, problems %q, warnings %q", r.ExitCode, r.Problems, r.Warnings)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not active after 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestGatherSlotMissing(t *testing.T) {
	e := newEnv(t)
	e.insertOutbox(t, "pending", 2, time.Minute)
	r := gather(t, e.opts)
	if r.ExitCode != SlotMissing || r.State != "slot_missing" || r.SlotExists {
		t.Fatalf("exit %d %q, want %d slot_missing", r.ExitCode, r.State, SlotMissing)
	}
	err := r.Err()
	if !errors.Is(err, replication.ErrSlotNotFound) || !strings.Contains(err.Error(), `"`+e.opts.Slot+`"`) || strings.Contains(err.Error(), "\n") {
		t.Errorf("err %v: want one line wrapping ErrSlotNotFound and naming the slot", err)
	}
	// The rest of the report is still there.
	if r.Pending == nil || *r.Pending != 2 || r.CurrentWALLSN == nil || r.ClickHouseRows == nil || r.LagBytes != nil {
		t.Errorf("pending %v current %v clickhouse rows %v lag %v", r.Pending, r.CurrentWALLSN, r.ClickHouseRows, r.LagBytes)
	}
}

// Slot names are unique in the cluster: a slot of the same name in another
// database is not ours, and cdc could not create its own.
func TestGatherSlotOfAnotherDatabase(t *testing.T) {
	mine, other := newEnv(t), newEnv(t)
	other.createSlot(t)
	o := mine.opts
	o.Slot = other.opts.Slot
	r := gather(t, o)
	if r.ExitCode != Error || !r.SlotExists || !strings.Contains(str(r.Reason), "belongs to database") {
		t.Fatalf("exit %d reason %v, want %d: belongs to another database", r.ExitCode, str(r.Reason), Error)
	}
}

func TestGatherPostgresUnreachable(t *testing.T) {
	// Connection refused, and a server that accepts but never answers: both
	// end within the connect timeout.
	silent := testenv.SilentListener(t)

	for name, url := range map[string]string{
		"refused": "postgres://postgres@127.0.0.1:1/cdc?sslmode=disable",
		"silent":  "postgres://postgres@" + silent + "/cdc?sslmode=disable",
	} {
		t.Run(name, func(t *testing.T) {
			o := Options{PostgresURL: url, Table: "public.event_outbox", Slot: "cdc_outbox", Timeout: time.Second,
				ClickHouse: ClickHouseOptions{Addr: []string{testenv.ClickHouseAddr(t)}, Database: "default", Table: "events"}}
			start := time.Now()
			r := gather(t, o)
			took := time.Since(start)
			if took > 3*time.Second {
				t.Errorf("took %s with a 1s timeout", took)
			}
			if r.ExitCode != Unreachable || r.State != "postgres_unreachable" || !errors.Is(r.Err(), ErrPostgresUnreachable) {
				t.Fatalf("exit %d %q err %v, want %d", r.ExitCode, r.State, r.Err(), Unreachable)
			}
			msg := r.Err().Error()
			if !strings.HasPrefix(msg, "postgres unreachable: ") || !strings.Contains(msg, "127.0.0.1:") || strings.Contains(msg, "\n") {
				t.Errorf("reason %q: want one line naming the server", msg)
			}
			if r.PostgresError == nil || r.Pending != nil || r.SlotExists {
				t.Errorf("postgres_error %v pending %v", r.PostgresError, r.Pending)
			}
		})
	}
}

func TestGatherBadURL(t *testing.T) {
	r := gather(t, Options{PostgresURL: "postgres://user:secret@127.0.0.1:notaport/db", Slot: "s", Table: "t", Timeout: time.Second})
	if r.ExitCode != Error || r.Err() == nil {
		t.Fatalf("exit %d, want %d", r.ExitCode, Error)
	}
	if strings.Contains(r.Err().Error(), "secret") {
		t.Errorf("reason %q shows the password", r.Err())
	}
}

// ClickHouse down never fails the report; it is reported, within the timeout.
func TestGatherClickHouseUnreachable(t *testing.T) {
	e := newEnv(t)
	e.createSlot(t)
	silent := testenv.SilentListener(t)
	for name, addr := range map[string]string{"refused": "127.0.0.1:1", "silent": silent} {
		t.Run(name, func(t *testing.T) {
			o := e.opts
			o.ClickHouse.Addr = []string{addr}
			o.Timeout = time.Second
			start := time.Now()
			r := gather(t, o)
			if took := time.Since(start); took > 4*time.Second {
				t.Errorf("took %s with a 1s timeout", took)
			}
			if r.ExitCode != Degraded || r.ClickHouseError == nil || r.ClickHouseRows != nil || !hasProblem(r, "clickhouse unavailable") {
				t.Fatalf("exit %d clickhouse_error %v rows %v warnings %q", r.ExitCode, r.ClickHouseError, r.ClickHouseRows, r.Warnings)
			}
			if r.Pending == nil || r.LagBytes == nil {
				t.Errorf("PostgreSQL part missing: pending %v lag %v", r.Pending, r.LagBytes)
			}
		})
	}
}

func TestGatherClickHouseTableMissing(t *testing.T) {
	e := newEnv(t)
	e.createSlot(t)
	o := e.opts
	o.ClickHouse.Table = "no_such_table"
	r := gather(t, o)
	if r.ExitCode != Degraded || r.ClickHouseError == nil || !strings.Contains(*r.ClickHouseError, "does not exist") || !hasProblem(r, "run `cdc migrate`") {
		t.Fatalf("exit %d clickhouse_error %v", r.ExitCode, r.ClickHouseError)
	}
}

func TestGatherOutboxMissing(t *testing.T) {
	e := newEnv(t)
	e.createSlot(t)
	o := e.opts
	o.Table = "public.no_such_outbox"
	r := gather(t, o)
	if r.ExitCode != Degraded || r.OutboxError == nil || r.Pending != nil || !hasProblem(r, "outbox unavailable") || !strings.Contains(*r.OutboxError, "run `cdc migrate`") {
		t.Fatalf("exit %d outbox_error %v pending %v", r.ExitCode, r.OutboxError, r.Pending)
	}
}

// When counting processed rows outlasts statement_timeout, the count is
// estimated from pg_class instead of failing. The outbox here is a view that
// sleeps only in the processed-count statement.
func TestGatherProcessedEstimate(t *testing.T) {
	e := newEnv(t)
	e.createSlot(t)
	e.insertOutbox(t, "pending", 2, time.Minute)
	e.insertOutbox(t, "processed", 3, time.Minute)
	e.exec(t, `CREATE VIEW slow_outbox AS SELECT * FROM event_outbox
		WHERE current_query() NOT LIKE '%= ''processed''%' OR (SELECT true FROM pg_sleep(2))`)
	o := e.opts
	o.Table = "public.slow_outbox"
	o.Timeout = 500 * time.Millisecond
	r := gather(t, o)
	if r.OutboxError != nil || !r.ProcessedEstimated || r.Processed == nil || *r.Pending != 2 || !hasWarning(r, "estimate") {
		t.Fatalf("outbox_error %v estimated %v processed %v pending %v", r.OutboxError, r.ProcessedEstimated, r.Processed, r.Pending)
	}
}

func TestClassifySlot(t *testing.T) {
	s := func(v string) *string { return &v }
	b := func(v bool) *bool { return &v }
	for _, tc := range []struct {
		name string
		slot SlotInfo
		want Code
		in   string
	}{
		{"missing", SlotInfo{SlotName: "x"}, SlotMissing, `slot missing: replication slot "x" does not exist`},
		{"reserved", SlotInfo{SlotName: "x", SlotExists: true, WALStatus: s("reserved")}, OK, ""},
		{"extended", SlotInfo{SlotName: "x", SlotExists: true, WALStatus: s("extended")}, OK, ""},
		{"unreserved is still usable", SlotInfo{SlotName: "x", SlotExists: true, WALStatus: s("unreserved")}, OK, ""},
		{"before 13: no wal_status", SlotInfo{SlotName: "x", SlotExists: true}, OK, ""},
		{"lost", SlotInfo{SlotName: "x", SlotExists: true, WALStatus: s("lost")}, SlotLost, `slot lost: replication slot "x" was invalidated (wal_status lost)`},
		{"17: invalidation_reason", SlotInfo{SlotName: "x", SlotExists: true, WALStatus: s("lost"), InvalidationReason: s("wal_removed"), Conflicting: b(false)},
			SlotLost, "(wal_status lost, invalidation_reason wal_removed)"},
		{"16: conflicting", SlotInfo{SlotName: "x", SlotExists: true, WALStatus: s("reserved"), Conflicting: b(true)},
			SlotLost, "conflicting with recovery"},
		{"16: not conflicting", SlotInfo{SlotName: "x", SlotExists: true, WALStatus: s("reserved"), Conflicting: b(false)}, OK, ""},
		{"lost wins over other problems", SlotInfo{SlotName: "x", SlotExists: true, WALStatus: s("lost"), SlotDatabase: s("other")}, SlotLost, "slot lost"},
		{"same database", SlotInfo{SlotName: "x", SlotExists: true, SlotType: s("logical"), Plugin: s("pgoutput"), SlotDatabase: s("db")}, OK, ""},
		{"other database", SlotInfo{SlotName: "x", SlotExists: true, SlotType: s("logical"), Plugin: s("pgoutput"), SlotDatabase: s("other")},
			Error, `replication slot "x" belongs to database "other", not "db"`},
		{"physical", SlotInfo{SlotName: "x", SlotExists: true, SlotType: s("physical")}, Error, "physical slot"},
		{"other plugin", SlotInfo{SlotName: "x", SlotExists: true, SlotType: s("logical"), Plugin: s("test_decoding"), SlotDatabase: s("db")},
			Error, `uses plugin "test_decoding"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, reason := ClassifySlot(tc.slot, "db")
			if code != tc.want || !strings.Contains(reason, tc.in) || strings.Contains(reason, "\n") || (code == OK) != (reason == "") {
				t.Errorf("ClassifySlot = %d %q, want %d containing %q", code, reason, tc.want, tc.in)
			}
		})
	}
}

func TestSlotQueryByVersion(t *testing.T) {
	all := []string{"wal_status", "safe_wal_size", "two_phase", "conflicting", "inactive_since", "invalidation_reason", "failover", "synced"}
	for _, tc := range []struct {
		version int
		has     []string
		stats   bool
	}{
		{120000, nil, false},
		{130000, []string{"wal_status", "safe_wal_size"}, false},
		{140000, []string{"wal_status", "safe_wal_size", "two_phase"}, true},
		{150000, []string{"wal_status", "safe_wal_size", "two_phase"}, true},
		{160000, []string{"wal_status", "safe_wal_size", "two_phase", "conflicting"}, true},
		{170000, all, true},
		{180000, all, true},
	} {
		q := SlotQuery(tc.version)
		for _, col := range all {
			want := false
			for _, h := range tc.has {
				want = want || h == col
			}
			if got := strings.Contains(q, "s."+col); got != want {
				t.Errorf("%d: query has %s = %v, want %v", tc.version, col, got, want)
			}
		}
		for _, col := range []string{"s.slot_name", "s.active_pid", "s.confirmed_flush_lsn", "s.restart_lsn", "pg_current_wal_lsn()"} {
			if !strings.Contains(q, col) {
				t.Errorf("%d: query lacks %s", tc.version, col)
			}
		}
		if got := StatsQuery(tc.version) != ""; got != tc.stats {
			t.Errorf("%d: stats query %v, want %v", tc.version, got, tc.stats)
		}
	}
}

// The queries for every version up to the test server's run on it (the 16+
// and 17+ columns exist only on those servers).
func TestSlotQueryRuns(t *testing.T) {
	e := newEnv(t)
	e.createSlot(t)
	ctx := context.Background()
	var server int
	if err := e.pg.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&server); err != nil {
		t.Fatal(err)
	}
	for _, v := range []int{120000, 130000, 140000, 150000, 160000, 170000} {
		if v > server {
			t.Logf("server %d: query for %d not run here", server, v)
			continue
		}
		for _, slot := range []string{e.opts.Slot, e.opts.Slot + "_missing"} {
			var row slotRow
			q, dests := slotQuery(v, &row)
			if err := e.pg.QueryRow(ctx, q, slot).Scan(dests...); err != nil {
				t.Fatalf("%d: %v\n%s", v, err, q)
			}
			if row.exists != (slot == e.opts.Slot) || row.current == nil {
				t.Errorf("%d %s: exists %v current %v", v, slot, row.exists, row.current)
			}
			if sq := StatsQuery(v); sq != "" && slot == e.opts.Slot {
				var a, b, c, d, e2, f, g, h *int64
				var reset *time.Time
				if err := e.pg.QueryRow(ctx, sq, slot).Scan(&a, &b, &c, &d, &e2, &f, &g, &h, &reset); err != nil {
					t.Fatalf("%d stats: %v", v, err)
				}
			}
		}
	}
}

func TestLSNJSON(t *testing.T) {
	l := LSN(0x16B3748)
	b, err := json.Marshal(struct {
		L  LSN  `json:"l"`
		P  *LSN `json:"p"`
		NP *LSN `json:"np"`
	}{l, &l, nil})
	if err != nil || string(b) != `{"l":"0/16B3748","p":"0/16B3748","np":null}` {
		t.Fatalf("%s %v", b, err)
	}
	var back LSN
	if err := back.UnmarshalText([]byte("1/A")); err != nil || back != LSN(1<<32|0xA) {
		t.Fatalf("%v %v", back, err)
	}
}

func hasWarning(r *Report, sub string) bool {
	for _, w := range r.Warnings {
		if strings.Contains(w, sub) {
			return true
		}
	}
	return false
}

func hasProblem(r *Report, sub string) bool {
	for _, p := range r.Problems {
		if strings.Contains(p, sub) {
			return true
		}
	}
	return false
}
