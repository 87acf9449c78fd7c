// Package testenv gives integration tests access to the shared real servers
// started by scripts/testenv.sh: a private PostgreSQL 15 cluster (wal_level =
// logical) and a private ClickHouse server.
//
// The servers are found through environment variables printed by
// `scripts/testenv.sh env`; `make test` sets them up and exports them. When
// they are missing, tests fail (never skip): an integration test that silently
// does not run proves nothing.
//
// Every test gets its own database on each server (NewPostgresDB,
// NewClickHouseDB), dropped again by t.Cleanup, so tests and packages can run
// in parallel against the same servers.
//
// Tests that stop or kill servers start private ones instead: StartPrivate
// (PostgreSQL + ClickHouse), StartPrivateClickHouse, and StartCluster (a
// PostgreSQL primary with a synchronous standby, for failover tests; any
// major from 14 on through ClusterOptions.BinDir).
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5"
)

// Environment variables printed by `scripts/testenv.sh env`.
const (
	EnvPostgresURL    = "CDC_TEST_POSTGRES_URL"
	EnvClickHouseAddr = "CDC_TEST_CLICKHOUSE_ADDR"
	EnvClickHouseHTTP = "CDC_TEST_CLICKHOUSE_HTTP"
	EnvPGBin          = "CDC_TEST_PGBIN"
	EnvPGDataDir      = "CDC_TEST_PG_DATADIR"
	EnvCHConfig       = "CDC_TEST_CH_CONFIG"
	EnvScript         = "CDC_TEST_ENV_SCRIPT"
)

// setupTimeout bounds every administrative round trip done by this package.
const setupTimeout = 30 * time.Second

func mustEnv(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("testenv: %s is not set: integration tests need the real servers of scripts/testenv.sh; "+
			"run `make test`, or `scripts/testenv.sh up && eval \"$(scripts/testenv.sh env)\"` before `go test`", name)
	}
	return v
}

// PostgresURL returns the URL of the shared test PostgreSQL server's
// administrative database (CDC_TEST_POSTGRES_URL). Tests should normally use
// NewPostgresDB instead, to get a database of their own.
func PostgresURL(t testing.TB) string {
	t.Helper()
	return mustEnv(t, EnvPostgresURL)
}

// ClickHouseAddr returns host:port of the shared test ClickHouse server's
// native protocol (CDC_TEST_CLICKHOUSE_ADDR).
func ClickHouseAddr(t testing.TB) string {
	t.Helper()
	return mustEnv(t, EnvClickHouseAddr)
}

// Connect opens a connection to a PostgreSQL URL, closed when the test ends
// (closing it earlier is fine).
func Connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("testenv: connect %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// WaitFor polls cond every 100 ms until it holds, and fails the test when
// timeout passes first.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// NewPostgresDB creates a fresh, uniquely named database on the test
// PostgreSQL server and returns a URL for it. t.Cleanup terminates its
// backends (walsenders included), drops the logical replication slots that
// belong to it and drops the database.
func NewPostgresDB(t testing.TB) string {
	t.Helper()
	admin := PostgresURL(t)
	name := uniqueName(t)

	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("testenv: parse %s: %v", EnvPostgresURL, err)
	}
	u.Path = "/" + name

	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("testenv: connect to test PostgreSQL (%s): %v", admin, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("testenv: create PostgreSQL database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := dropPostgresDB(admin, name); err != nil {
			t.Errorf("testenv: cleanup of PostgreSQL database %s: %v", name, err)
		}
	})
	return u.String()
}

func dropPostgresDB(admin, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	// Logical slots pin the database (DROP DATABASE refuses while one exists)
	// and retain WAL forever; active ones must first lose their walsender.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := conn.Exec(ctx,
			`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			 WHERE datname = $1 AND pid <> pg_backend_pid()`, name); err != nil {
			return fmt.Errorf("terminate backends: %w", err)
		}
		if _, err := conn.Exec(ctx,
			`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
			 WHERE database = $1 AND NOT active`, name); err != nil {
			// A slot can turn active (or vanish) between the WHERE and the
			// drop; retry until the deadline.
			if time.Now().After(deadline) {
				return fmt.Errorf("drop replication slots: %w", err)
			}
		}
		var left []string
		rows, err := conn.Query(ctx, `SELECT slot_name FROM pg_replication_slots WHERE database = $1`, name)
		if err != nil {
			return fmt.Errorf("list replication slots: %w", err)
		}
		left, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("list replication slots: %w", err)
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication slots still active after 10s: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database: %w", err)
	}
	return nil
}

// NewClickHouseDB creates a fresh, uniquely named database on the test
// ClickHouse server and returns its name; t.Cleanup drops it.
func NewClickHouseDB(t testing.TB) string {
	t.Helper()
	addr := ClickHouseAddr(t)
	name := uniqueName(t)
	if err := clickHouseExec(addr, "CREATE DATABASE `"+name+"`"); err != nil {
		t.Fatalf("testenv: create ClickHouse database %s on %s: %v", name, addr, err)
	}
	t.Cleanup(func() {
		if err := clickHouseExec(addr, "DROP DATABASE IF EXISTS `"+name+"`"); err != nil {
			t.Errorf("testenv: cleanup of ClickHouse database %s: %v", name, err)
		}
	})
	return name
}

func clickHouseExec(addr, query string) error {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{addr},
		DialTimeout: 10 * time.Second,
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	return conn.Exec(ctx, query)
}

// Script runs scripts/testenv.sh (CDC_TEST_ENV_SCRIPT) with args, e.g.
// Script(t, "ch-stop"), Script(t, "ch-start") or Script(t, "pg-restart"),
// failing the test with the script's output when it fails.
//
// These commands act on the servers every concurrently running test shares.
func Script(t testing.TB, args ...string) {
	t.Helper()
	script := mustEnv(t, EnvScript)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("testenv: %s %s: %v\n%s", script, strings.Join(args, " "), err, out)
	}
	t.Logf("testenv: %s %s\n%s", script, strings.Join(args, " "), out)
}

// maxNameLen is PostgreSQL's identifier limit (NAMEDATALEN-1).
const maxNameLen = 63

// uniqueName returns "t_<sanitized test name>_<random hex>", lowercase,
// at most 63 bytes, valid unquoted in PostgreSQL and ClickHouse.
func uniqueName(t testing.TB) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("testenv: random: %v", err)
	}
	suffix := "_" + hex.EncodeToString(b[:])
	base := sanitize(t.Name())
	if limit := maxNameLen - len("t_") - len(suffix); len(base) > limit {
		base = strings.TrimRight(base[:limit], "_")
	}
	return "t_" + base + suffix
}

func sanitize(s string) string {
	var sb strings.Builder
	underscore := false
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			sb.WriteRune(r)
			underscore = false
			continue
		}
		if !underscore && sb.Len() > 0 {
			sb.WriteByte('_')
			underscore = true
		}
	}
	return strings.TrimRight(sb.String(), "_")
}
