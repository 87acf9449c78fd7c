package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// statusFixture is a migrated PostgreSQL database (with or without the
// slot) and ClickHouse database, and a config file pointing at them.
type statusFixture struct {
	pgURL  string
	slot   string
	pg     *pgx.Conn
	chDB   string
	config string
}

func newStatusFixture(t *testing.T, withSlot bool) *statusFixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := &statusFixture{pgURL: testenv.NewPostgresDB(t), chDB: testenv.NewClickHouseDB(t)}
	var err error
	if f.pg, err = pgx.Connect(ctx, f.pgURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.pg.Close(context.Background()) })
	if _, err := migrations.ApplyPostgres(ctx, f.pg, migrations.Postgres{Table: "public.event_outbox", Publication: "cdc_outbox"}); err != nil {
		t.Fatal(err)
	}
	ch, err := clickhouse.Open(&clickhouse.Options{Addr: []string{testenv.ClickHouseAddr(t)}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := migrations.ApplyClickHouse(ctx, ch, migrations.ClickHouse{Database: f.chDB, Table: "events"}); err != nil {
		t.Fatal(err)
	}
	// Slot names are unique in the cluster the tests share: name it after
	// the test's own database.
	f.slot = f.pg.Config().Database
	if withSlot {
		if _, err := f.pg.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, f.slot); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.pg.Exec(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version, status)
		SELECT 'test.event', now(), 'test', '{}', 1, s FROM unnest(ARRAY['pending', 'pending', 'failed', 'processed']) AS s`); err != nil {
		t.Fatal(err)
	}
	f.config = writeStatusConfig(t, f.pgURL, f.slot, testenv.ClickHouseAddr(t), f.chDB)
	return f
}

func writeStatusConfig(t *testing.T, pgURL, slot, chAddr, chDB string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cdc.yaml")
	yaml := fmt.Sprintf("postgres:\n  url: %q\n  slot: %q\nclickhouse:\n  addr: %q\n  database: %q\n", pgURL, slot, chAddr, chDB)
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// clearConfigEnv keeps CDC_* variables of the surrounding environment from
// overriding the test's config file (an empty variable counts as unset).
func clearConfigEnv(t *testing.T) {
	for _, k := range config.Keys() {
		if os.Getenv(config.EnvVar(k)) != "" {
			t.Setenv(config.EnvVar(k), "")
		}
	}
}

// runStatusCmd runs `cdc status args…` in-process and returns stdout and the
// error RunE returned.
func runStatusCmd(ctx context.Context, t *testing.T, args ...string) (string, error) {
	t.Helper()
	clearConfigEnv(t)
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"status"}, args...))
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func TestStatusTable(t *testing.T) {
	f := newStatusFixture(t, true)
	out, err := runStatusCmd(context.Background(), t, "--config", f.config)
	t.Logf("output:\n%s", out)
	// A usable slot nobody streams from, and a failed row: degraded.
	if code := exitCodeOf(err); code != 5 {
		t.Fatalf("status: exit %d (%v), want 5", code, err)
	}
	if first := strings.SplitN(out, "\n", 2)[0]; !strings.Contains(first, "DEGRADED: no active consumer") || !strings.Contains(first, "1 failed rows") {
		t.Errorf("first line %q does not name the verdict and its problems", first)
	}
	for _, want := range []string{"PostgreSQL", "current_wal_lsn", "Slot", f.slot + " (logical, pgoutput",
		"confirmed_flush_lsn", "restart_lsn", "wal_status", "reserved", "lag", "retained WAL", "safe_wal_size",
		"inactive_since", "spilled to disk", "0 txns", "Outbox", "public.event_outbox",
		"pending", "failed", "processed", "ClickHouse", f.chDB + ".events", "rows", "newest event",
		"no process is streaming"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if fs := strings.Fields(l); len(fs) >= 2 {
			lines[fs[0]] = strings.Join(fs[1:], " ")
		}
	}
	// inactive_since exists from PostgreSQL 17 on (the matrix runs 14–18).
	var vnum int
	if err := f.pg.QueryRow(context.Background(), `SELECT current_setting('server_version_num')::int`).Scan(&vnum); err != nil {
		t.Fatal(err)
	}
	if got := lines["inactive_since"]; (vnum < 170000 && got != "n/a (PostgreSQL 17+)") || (vnum >= 170000 && !strings.HasSuffix(got, " ago)")) {
		t.Errorf("inactive_since %q on server_version_num %d", got, vnum)
	}
	if !strings.HasPrefix(lines["pending"], "2 (oldest created ") || lines["failed"] != "1" || lines["processed"] != "1" {
		t.Errorf("pending %q failed %q processed %q", lines["pending"], lines["failed"], lines["processed"])
	}
}

func TestStatusJSON(t *testing.T) {
	f := newStatusFixture(t, true)
	out, err := runStatusCmd(context.Background(), t, "--config", f.config, "--json")
	if code := exitCodeOf(err); code != 5 {
		t.Fatalf("status --json: exit %d (%v), want 5 (degraded)\n%s", code, err, out)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"slot_name", "active", "active_pid", "confirmed_flush_lsn", "current_wal_lsn", "lag_bytes",
		"wal_status", "pending", "failed", "processed", "postgres_version", "verdict", "problems", "wal_level"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	if m["pending"] != 2.0 || m["failed"] != 1.0 || m["processed"] != 1.0 || m["state"] != "degraded" || m["exit_code"] != 5.0 ||
		m["verdict"] != "degraded" || len(m["problems"].([]any)) != 2 {
		t.Errorf("pending %v failed %v processed %v state %v exit_code %v verdict %v problems %v", m["pending"], m["failed"], m["processed"],
			m["state"], m["exit_code"], m["verdict"], m["problems"])
	}
}

func TestStatusWatch(t *testing.T) {
	f := newStatusFixture(t, true)
	for _, asJSON := range []bool{false, true} {
		t.Run(fmt.Sprintf("json=%v", asJSON), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
			defer cancel()
			args := []string{"--config", f.config, "--watch", "--interval", "100ms"}
			if asJSON {
				args = append(args, "--json")
			}
			start := time.Now()
			out, err := runStatusCmd(ctx, t, args...)
			if code := exitCodeOf(err); code != 5 { // the last report's: degraded (no consumer, a failed row)
				t.Fatalf("watch: exit %d (%v), want 5", code, err)
			}
			if took := time.Since(start); took > 4*time.Second {
				t.Errorf("watch took %s to stop after its context ended (2.5s)", took)
			}
			var renders int
			if asJSON {
				for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
					var m map[string]any
					if err := json.Unmarshal([]byte(l), &m); err != nil {
						t.Fatalf("line is not one JSON object: %v: %q", err, l)
					}
					renders++
				}
			} else {
				renders = strings.Count(out, "cdc status")
			}
			if renders < 2 {
				t.Errorf("%d renders in 2.5s at a 100ms interval:\n%s", renders, out)
			}
		})
	}
}

func TestStatusWatchKeepsGoingWhenUnreachable(t *testing.T) {
	path := writeStatusConfig(t, "postgres://postgres@127.0.0.1:1/cdc?sslmode=disable", "cdc_outbox", "127.0.0.1:1", "default")
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	out, err := runStatusCmd(ctx, t, "--config", path, "--watch", "--interval", "100ms")
	t.Logf("output:\n%s", out)
	if code := exitCodeOf(err); code != 2 {
		t.Fatalf("exit %d (%v), want 2 (the last report's)", code, err)
	}
	if n := strings.Count(out, "POSTGRES UNREACHABLE"); n < 2 {
		t.Errorf("%d renders:\n%s", n, out)
	}
	if !strings.Contains(out, "reason") || !strings.Contains(out, "connection refused") {
		t.Errorf("watch output lacks the reason:\n%s", out)
	}
}

// TestStatusExitCodes runs the built binary: exit codes and the one-line
// reason on stderr are what scripts see.
func TestStatusExitCodes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "cdc")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	healthy := newStatusFixture(t, true)
	missing := newStatusFixture(t, false)
	silent := testenv.SilentListener(t)

	for _, tc := range []struct {
		name    string
		config  string
		args    []string
		env     []string
		code    int
		stderr  string
		maxTime time.Duration
	}{
		{name: "usable slot, no consumer", config: healthy.config, code: 5, stderr: "cdc: no active consumer: "},
		{name: "usable slot, no consumer, json", config: healthy.config, args: []string{"--json"}, code: 5, stderr: "1 failed rows"},
		{name: "slot missing", config: missing.config, code: 3, stderr: `cdc: slot missing: replication slot "` + missing.slot + `" does not exist`},
		{name: "slot missing json", config: missing.config, args: []string{"--json"}, code: 3, stderr: "cdc: slot missing: "},
		{name: "postgres refused", config: writeStatusConfig(t, "postgres://postgres@127.0.0.1:1/cdc?sslmode=disable", "cdc_outbox", testenv.ClickHouseAddr(t), "default"),
			code: 2, stderr: "cdc: postgres unreachable: ", maxTime: 3 * time.Second},
		{name: "postgres silent, default timeout", config: writeStatusConfig(t, "postgres://postgres@"+silent+"/cdc?sslmode=disable", "cdc_outbox", testenv.ClickHouseAddr(t), "default"),
			code: 2, stderr: "(connect timeout 5s)", maxTime: 8 * time.Second},
		{name: "postgres silent, --timeout 1s", config: writeStatusConfig(t, "postgres://postgres@"+silent+"/cdc?sslmode=disable", "cdc_outbox", testenv.ClickHouseAddr(t), "default"),
			args: []string{"--timeout", "1s", "--json"}, code: 2, stderr: "(connect timeout 1s)", maxTime: 3 * time.Second},
		{name: "clickhouse down is degraded", config: writeStatusConfig(t, healthy.pgURL, healthy.slot, "127.0.0.1:1", healthy.chDB), code: 5,
			stderr: "clickhouse unavailable: 127.0.0.1:1"},
		{name: "bad config", config: healthy.config, env: []string{"CDC_BATCH_SIZE=banana"}, code: 1, stderr: "cdc: batch.size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code, took := runStatusBinary(t, bin, tc.env, append([]string{"status", "--config", tc.config}, tc.args...)...)
			t.Logf("exit %d in %s\nstdout:\n%s\nstderr:\n%s", code, took, stdout, stderr)
			if code != tc.code {
				t.Fatalf("exit code %d, want %d", code, tc.code)
			}
			if tc.code == 0 && stderr != "" {
				t.Errorf("stderr not empty on success")
			}
			if tc.code != 0 {
				if strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.stderr) {
					t.Errorf("stderr %q: want one line containing %q", stderr, tc.stderr)
				}
			}
			if tc.maxTime > 0 && took > tc.maxTime {
				t.Errorf("took %s, want at most %s", took, tc.maxTime)
			}
			if len(tc.args) > 0 && tc.args[len(tc.args)-1] == "--json" {
				var m map[string]any
				if err := json.Unmarshal([]byte(stdout), &m); err != nil {
					t.Fatalf("stdout is not JSON: %v", err)
				}
				if m["exit_code"] != float64(tc.code) {
					t.Errorf("exit_code in JSON %v, want %d", m["exit_code"], tc.code)
				}
			}
		})
	}

	// A real lost slot needs max_slot_wal_keep_size, which the shared server
	// must keep: use a throwaway server.
	t.Run("slot lost", func(t *testing.T) {
		pgURL := throwawayPostgres(t)
		loseSlot(t, pgURL, "cdc_outbox")
		cfg := writeStatusConfig(t, pgURL, "cdc_outbox", testenv.ClickHouseAddr(t), "default")

		stdout, stderr, code, took := runStatusBinary(t, bin, nil, "status", "--config", cfg, "--json")
		t.Logf("exit %d in %s\nstdout:\n%s\nstderr:\n%s", code, took, stdout, stderr)
		if code != 4 {
			t.Fatalf("exit code %d, want 4", code)
		}
		if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, `cdc: slot lost: replication slot "cdc_outbox" was invalidated (wal_status lost`) {
			t.Errorf("stderr %q: want one line explaining the lost slot", stderr)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(stdout), &m); err != nil {
			t.Fatalf("stdout is not JSON: %v", err)
		}
		if m["wal_status"] != "lost" || m["state"] != "slot_lost" || m["restart_lsn"] != nil || m["safe_wal_size"] != nil {
			t.Errorf("wal_status %v state %v restart_lsn %v safe_wal_size %v", m["wal_status"], m["state"], m["restart_lsn"], m["safe_wal_size"])
		}

		// The table shows it too (the reason itself goes to stderr).
		stdout, _, code, _ = runStatusBinary(t, bin, nil, "status", "--config", cfg)
		t.Logf("table:\n%s", stdout)
		if code != 4 || !strings.Contains(stdout, "SLOT LOST") || !strings.Contains(stdout, "lost") {
			t.Errorf("exit %d, table:\n%s", code, stdout)
		}
	})
}

func runStatusBinary(t *testing.T, bin string, extraEnv []string, args ...string) (stdout, stderr string, code int, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CDC_") || strings.HasPrefix(kv, "CDC_TEST") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, extraEnv...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	var xe *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &xe):
		code = xe.ExitCode()
	default:
		t.Fatalf("run %s: %v", bin, err)
	}
	return o.String(), e.String(), code, took
}

// throwawayPostgres starts a private PostgreSQL (and, since the script
// manages both, a ClickHouse) through scripts/testenv.sh in its own state
// directory and ports, and stops it when the test ends. It returns the URL
// of its database.
func throwawayPostgres(t *testing.T) string {
	t.Helper()
	script := os.Getenv(testenv.EnvScript)
	if script == "" {
		t.Fatalf("%s is not set: run `eval \"$(scripts/testenv.sh env)\"` first", testenv.EnvScript)
	}
	// Server users must traverse the directory: not under t.TempDir() (0700).
	dir, err := os.MkdirTemp("/tmp", "cdc-status-lost-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ports := testenv.FreePorts(t, 4)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CDC_TESTENV_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"CDC_TESTENV_DIR="+dir,
		fmt.Sprintf("CDC_TESTENV_PGPORT=%d", ports[0]),
		fmt.Sprintf("CDC_TESTENV_CHPORT=%d", ports[1]),
		fmt.Sprintf("CDC_TESTENV_CHHTTPPORT=%d", ports[2]),
		fmt.Sprintf("CDC_TESTENV_CHINTERPORT=%d", ports[3]),
		"CDC_TESTENV_PGDB=cdc",
	)
	if bin := os.Getenv(testenv.EnvPGBin); bin != "" {
		env = append(env, "CDC_TESTENV_PGBIN="+bin)
	}
	run := func(arg string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, script, arg)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		t.Logf("testenv.sh %s (state %s):\n%s", arg, dir, out)
		return err
	}
	t.Cleanup(func() {
		// Only this test's servers: the state directory is private.
		if err := run("down"); err != nil {
			t.Errorf("stop throwaway servers: %v", err)
		}
		os.RemoveAll(dir)
	})
	if err := run("up"); err != nil {
		t.Fatalf("start throwaway servers: %v", err)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/cdc?sslmode=disable", ports[0])
}

// loseSlot creates a logical slot on the server and makes the server remove
// WAL the slot needs: max_slot_wal_keep_size = 1MB, then WAL segment
// switches and a checkpoint, until wal_status is 'lost'.
func loseSlot(t *testing.T, pgURL, slot string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, q := range []string{
		`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`,
		`SELECT pg_reload_conf()`,
		`CREATE TABLE wal_filler (x int)`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for i := 0; ; i++ {
		var v string
		if err := conn.QueryRow(ctx, `SHOW max_slot_wal_keep_size`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v == "1MB" {
			break
		}
		if i > 100 {
			t.Fatalf("max_slot_wal_keep_size still %s after reload", v)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		for _, q := range []string{`INSERT INTO wal_filler VALUES (1)`, `SELECT pg_switch_wal()`, `INSERT INTO wal_filler VALUES (2)`, `SELECT pg_switch_wal()`, `CHECKPOINT`} {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		var status *string
		if err := conn.QueryRow(ctx, `SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&status); err != nil {
			t.Fatal(err)
		}
		if status != nil && *status == "lost" {
			return
		}
	}
	t.Fatalf("slot %s not lost after 20 checkpoints", slot)
}
