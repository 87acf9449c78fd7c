package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// withEnv returns env with the given CDC_* variables replaced or added.
func withEnv(env []string, kv ...string) []string {
	out := append([]string{}, env...)
	for _, set := range kv {
		key := set[:strings.IndexByte(set, '=')+1]
		replaced := false
		for i := range out {
			if strings.HasPrefix(out[i], key) {
				out[i], replaced = set, true
			}
		}
		if !replaced {
			out = append(out, set)
		}
	}
	return out
}

// withPGURL rewrites the user and database of a PostgreSQL URL.
func withPGURL(t *testing.T, raw, user, db string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		u.User = url.User(user)
	}
	if db != "" {
		u.Path = "/" + db
	}
	return u.String()
}

// runUntilExit runs `cdc run` and returns its output and exit code; code -1
// means it was still running after within (and was killed).
func runUntilExit(t *testing.T, bin string, env []string, within time.Duration) (string, int, time.Duration) {
	t.Helper()
	return runWithArgs(t, bin, env, within, "run")
}

// runWithArgs runs cdc with args, as runUntilExit runs `cdc run`.
func runWithArgs(t *testing.T, bin string, env []string, within time.Duration, args ...string) (string, int, time.Duration) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	start := time.Now()
	out, err := runWithTimeout(cmd, within)
	took := time.Since(start)
	if err != nil && strings.HasPrefix(err.Error(), "still running") {
		return out, -1, took
	}
	return out, cmd.ProcessState.ExitCode(), took
}

// lastLine is the line main prints on stderr when a command fails.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// A set-up error no retry can fix makes `cdc run` exit non-zero within 30 s
// with one message naming the cause and the fix, instead of looping on
// "session ended, restarting".
func TestRunStopsOnPermanentSetupErrors(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	ctx := context.Background()

	// A role that may log in and use the tables, without REPLICATION.
	role := "norepl_" + o.Slot[len(o.Slot)-8:]
	for _, q := range []string{
		`CREATE ROLE ` + role + ` LOGIN`,
		`GRANT ALL ON ALL TABLES IN SCHEMA public TO ` + role,
		`GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO ` + role,
	} {
		if _, err := o.PG.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		o.PG.Exec(context.Background(), `DROP OWNED BY `+role)
		o.PG.Exec(context.Background(), `DROP ROLE `+role)
	})

	// ClickHouse tables that cdc cannot deliver into.
	for _, q := range []string{
		"CREATE TABLE `" + o.CHDB + "`.nolsn (id Int64, event_type String, event_date_time DateTime, created_at DateTime) ENGINE = MergeTree ORDER BY id",
		"CREATE TABLE `" + o.CHDB + "`.strlsn (id Int64, event_type String, event_date_time DateTime, created_at DateTime, " +
			"_lsn String, _seq UInt64, _fingerprint UInt64) ENGINE = MergeTree ORDER BY id",
	} {
		if err := o.CH.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// A PostgreSQL database without `cdc migrate`.
	bare := testenv.NewPostgresDB(t)

	base := withEnv(o.Env(), "CDC_HTTP_LISTEN=127.0.0.1:0")
	cases := []struct {
		name string
		env  []string
		want []string // in the last line (the one message)
	}{
		{"unknown role", []string{"CDC_POSTGRES_URL=" + withPGURL(t, o.PGURL, "no_such_role", "")},
			[]string{"authentication", "no_such_role", "check the role and password in postgres.url"}},
		{"unknown database", []string{"CDC_POSTGRES_URL=" + withPGURL(t, o.PGURL, "", "no_such_db")},
			[]string{"missing object", "no_such_db", "check the database name in postgres.url"}},
		{"role without REPLICATION", []string{"CDC_POSTGRES_URL=" + withPGURL(t, o.PGURL, role, "")},
			[]string{"insufficient privilege", "ALTER ROLE name REPLICATION"}},
		{"outbox not migrated", []string{"CDC_POSTGRES_URL=" + bare},
			[]string{"missing object", "run `cdc migrate`"}},
		{"clickhouse table missing", []string{"CDC_CLICKHOUSE_TABLE=no_such_table"},
			[]string{"missing object", "no_such_table", "does not exist", "run `cdc migrate`"}},
		{"clickhouse database missing", []string{"CDC_CLICKHOUSE_DATABASE=no_such_db_" + o.Slot[len(o.Slot)-8:]},
			[]string{"missing object", "clickhouse.database"}},
		{"clickhouse unknown user", []string{"CDC_CLICKHOUSE_USERNAME=no_such_user"},
			[]string{"authentication", "clickhouse.username"}},
		{"clickhouse table lacks _lsn and _seq", []string{"CDC_CLICKHOUSE_TABLE=nolsn"},
			[]string{"schema", "lacks _lsn", "ALTER TABLE `" + o.CHDB + "`.`nolsn` ADD COLUMN `_lsn` UInt64, ADD COLUMN `_seq` UInt64, ADD COLUMN `_fingerprint` UInt64"}},
		{"clickhouse _lsn of the wrong type", []string{"CDC_CLICKHOUSE_TABLE=strlsn"},
			[]string{"schema", "has _lsn String, not UInt64", "ALTER TABLE `" + o.CHDB + "`.`strlsn` MODIFY COLUMN `_lsn` UInt64"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			runStopsAtStart(t, bin, withEnv(base, c.env...), c.want)
		})
	}
	// Nothing was created on the way: no slot for the failed starts.
	var slots int
	if err := o.PG.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, o.Slot).Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if slots != 0 {
		t.Errorf("%d slots left behind", slots)
	}
}

// runStopsAtStart runs `cdc run` and checks that it exits non-zero within
// 30 s, without a retry or a shutdown no signal asked for, with a last line
// (the one message) that holds every string of want.
func runStopsAtStart(t *testing.T, bin string, env []string, want []string) {
	t.Helper()
	out, code, took := runUntilExit(t, bin, env, 40*time.Second)
	if code <= 0 {
		t.Fatalf("exit code %d after %s, want non-zero within 30 s; output:\n%s", code, took, tail2(out, 15))
	}
	if took > 30*time.Second {
		t.Errorf("exited after %s, want within 30 s", took)
	}
	msg := lastLine(out)
	t.Logf("exit %d after %s: %s", code, took.Round(time.Millisecond), msg)
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("message lacks %q:\n%s", w, msg)
		}
	}
	if n := strings.Count(out, "session ended, restarting"); n > 0 {
		t.Errorf("retried %d times before giving up:\n%s", n, tail2(out, 15))
	}
	if strings.Contains(out, "shutting down: delivering buffered rows") {
		t.Errorf("announced a shutdown that no signal asked for:\n%s", tail2(out, 15))
	}
}

// wal_level below logical is permanent: `cdc run` says how to fix it.
func TestRunStopsOnWALLevel(t *testing.T) {
	bin := cdcBinary(t)
	srv := testenv.StartPrivate(t, "wallevel")
	env := []string{"CDC_POSTGRES_URL=" + srv.PGURL, "CDC_CLICKHOUSE_ADDR=" + srv.CHAddr, "CDC_CLICKHOUSE_DATABASE=wl",
		"CDC_POSTGRES_SLOT=cdc", "CDC_LOG_FORMAT=json", "CDC_HTTP_LISTEN=127.0.0.1:0", "CDC_RETRY_MAX_BACKOFF=500ms"}
	migrate(t, bin, env)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, srv.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `ALTER SYSTEM SET wal_level = replica`)
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srv.Script(t, "pg-restart")
	if out, code := migrateBinary(t, bin, env); code != 0 || !strings.Contains(out, "wal_level is not logical") {
		t.Errorf("migrate with wal_level = replica: exit %d, want 0 and a warning:\n%s", code, out)
	}

	out, code, took := runUntilExit(t, bin, env, 40*time.Second)
	if code <= 0 || took > 30*time.Second {
		t.Fatalf("exit code %d after %s, want non-zero within 30 s; output:\n%s", code, took, tail2(out, 15))
	}
	msg := lastLine(out)
	for _, w := range []string{"wal_level", "set wal_level = logical", "restart PostgreSQL"} {
		if !strings.Contains(msg, w) {
			t.Errorf("message lacks %q:\n%s", w, msg)
		}
	}
}

// Transient errors keep retrying: ClickHouse unreachable at start, and a
// ClickHouse table dropped after the first successful session (it is
// delivered to once `cdc migrate` re-creates it).
func TestRunRetriesTransientAndLaterErrors(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	dir := t.TempDir()

	// Nothing listens on this port: a network error, retried.
	down := startDaemon(t, bin, withEnv(o.Env(), "CDC_HTTP_LISTEN=127.0.0.1:0",
		fmt.Sprintf("CDC_CLICKHOUSE_ADDR=127.0.0.1:%d", testenv.FreePort(t))), dir, "down")
	waitUntil(t, "a retried session", 30*time.Second, func() bool { return logContains(down.log, "session ended, restarting") })
	time.Sleep(3 * time.Second)
	if !down.running() {
		t.Fatalf("cdc run exited on an unreachable ClickHouse:\n%s", tail(down.log, 10))
	}
	down.terminate(t, 30*time.Second)

	p := startDaemon(t, bin, withEnv(o.Env(), "CDC_HTTP_LISTEN=127.0.0.1:0"), dir, "up")
	first := o.MustInsert(10, true)
	o.WaitCH(10, 30*time.Second)
	if err := o.CH.Exec(context.Background(), "DROP TABLE `"+o.CHDB+"`.events"); err != nil {
		t.Fatal(err)
	}
	second := o.MustInsert(10, true)
	waitUntil(t, "a failed insert", 30*time.Second, func() bool {
		return logContains(p.log, "session ended, restarting") || logContains(p.log, "retrying")
	})
	time.Sleep(2 * time.Second)
	if !p.running() {
		t.Fatalf("cdc run exited on an error after its first successful session:\n%s", tail(p.log, 10))
	}
	migrate(t, bin, o.Env())
	o.WaitCH(10, 60*time.Second) // the re-created table receives the second transaction
	if code := p.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	_ = first
	if got := o.CHIDs(); len(got) != len(second) || got[0] != second[0] {
		t.Errorf("re-created table holds %v, want %v", got, second)
	}
}

func tail2(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func migrateBinary(t *testing.T, bin string, env []string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, "migrate")
	cmd.Env = append(os.Environ(), env...)
	out, err := runWithTimeout(cmd, 2*time.Minute)
	if err != nil && strings.HasPrefix(err.Error(), "still running") {
		t.Fatalf("cdc migrate hangs:\n%s", out)
	}
	return out, cmd.ProcessState.ExitCode()
}

// cdc migrate reaches both servers before changing either, refuses to adopt
// a ClickHouse table cdc cannot deliver into (naming the ALTER TABLE), and
// tells applied from already there.
func TestMigrateChecksBothServersAndTheAdoptedTable(t *testing.T) {
	bin := cdcBinary(t)
	pgURL, chDB := testenv.NewPostgresDB(t), testenv.NewClickHouseDB(t)
	o := testenv.OpenOutbox(t, pgURL, testenv.ClickHouseAddr(t), chDB)
	env := []string{"CDC_POSTGRES_URL=" + pgURL, "CDC_CLICKHOUSE_ADDR=" + o.CHAddr, "CDC_CLICKHOUSE_DATABASE=" + chDB, "CDC_LOG_FORMAT=json"}
	outboxExists := func() bool {
		var ok bool
		if err := o.PG.QueryRow(context.Background(), `SELECT to_regclass('public.event_outbox') IS NOT NULL`).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}

	out, code := migrateBinary(t, bin, withEnv(env, fmt.Sprintf("CDC_CLICKHOUSE_ADDR=127.0.0.1:%d", testenv.FreePort(t))))
	if code == 0 {
		t.Fatalf("migrate with ClickHouse unreachable exited 0:\n%s", out)
	}
	if outboxExists() {
		t.Errorf("migrate changed PostgreSQL although ClickHouse was unreachable")
	}
	if !strings.Contains(lastLine(out), "nothing was changed") {
		t.Errorf("message does not say nothing changed: %s", lastLine(out))
	}

	// An adopted table without the bookkeeping columns.
	if err := o.CH.Exec(context.Background(), "CREATE TABLE `"+chDB+"`.events (id Int64, event_type String, event_date_time DateTime, "+
		"created_at DateTime) ENGINE = MergeTree ORDER BY id"); err != nil {
		t.Fatal(err)
	}
	out, code = migrateBinary(t, bin, env)
	want := "ALTER TABLE `" + chDB + "`.`events` ADD COLUMN `_lsn` UInt64, ADD COLUMN `_seq` UInt64"
	if code == 0 || !strings.Contains(lastLine(out), want) || !strings.Contains(lastLine(out), "schema error") {
		t.Fatalf("migrate of a table without _lsn/_seq: exit %d, want non-zero naming %q:\n%s", code, want, out)
	}
	if strings.Contains(out, "clickhouse migrated") {
		t.Errorf("migrate said the ClickHouse side was migrated:\n%s", out)
	}
	if err := o.CH.Exec(context.Background(), "ALTER TABLE `"+chDB+"`.events ADD COLUMN _lsn UInt64, ADD COLUMN _seq UInt64"); err != nil {
		t.Fatal(err)
	}
	out, code = migrateBinary(t, bin, env)
	if code != 0 || !strings.Contains(out, "adopted the existing table") {
		t.Fatalf("migrate after the fix: exit %d, want 0 and the table adopted:\n%s", code, out)
	}

	out, code = migrateBinary(t, bin, env)
	if code != 0 || strings.Count(out, "already up to date, nothing applied") != 2 || strings.Contains(out, `"applied"`) {
		t.Errorf("rerun: exit %d, want both servers already up to date:\n%s", code, out)
	}
}
