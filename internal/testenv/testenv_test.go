package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5"
)

// TestServers fails loudly when the shared test servers are missing or
// misconfigured.
func TestServers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("postgres", func(t *testing.T) {
		dbURL := NewPostgresDB(t)
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatalf("connect %s: %v", dbURL, err)
		}
		defer conn.Close(ctx)
		var one int
		var db, walLevel string
		if err := conn.QueryRow(ctx, "SELECT 1, current_database(), current_setting('wal_level')").Scan(&one, &db, &walLevel); err != nil {
			t.Fatal(err)
		}
		if one != 1 || !strings.HasPrefix(db, "t_testservers_postgres_") || walLevel != "logical" {
			t.Fatalf("got (%d, %q, wal_level=%q)", one, db, walLevel)
		}

		// A logical slot left behind in the database must not block cleanup.
		if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", db); err != nil {
			t.Fatalf("create logical slot: %v", err)
		}
		t.Cleanup(func() {
			// Runs before NewPostgresDB's cleanup (LIFO): the slot still exists.
			conn, err := pgx.Connect(context.Background(), PostgresURL(t))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			var n int
			if err := conn.QueryRow(context.Background(),
				"SELECT count(*) FROM pg_replication_slots WHERE database = $1", db).Scan(&n); err != nil || n != 1 {
				t.Fatalf("slots in %s: %d, %v", db, n, err)
			}
		})
	})

	t.Run("clickhouse", func(t *testing.T) {
		db := NewClickHouseDB(t)
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ClickHouseAddr(t)}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var one uint8
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("SELECT 1: %d, %v", one, err)
		}
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = ?", db).Scan(&n); err != nil || n != 1 {
			t.Fatalf("database %s: count=%d, %v", db, n, err)
		}
	})
}

func TestScript(t *testing.T) {
	Script(t, "status") // read-only: must not disturb tests running in parallel
}

func TestUniqueName(t *testing.T) {
	t.Run("Some/Sub Test-With.Chars", func(t *testing.T) {
		got := uniqueName(t)
		if !strings.HasPrefix(got, "t_testuniquename_some_sub_test_with_chars_") {
			t.Fatalf("got %q", got)
		}
	})
	t.Run(strings.Repeat("VeryLong", 20), func(t *testing.T) {
		a, b := uniqueName(t), uniqueName(t)
		if len(a) > maxNameLen || a == b || a != strings.ToLower(a) {
			t.Fatalf("got %q (%d bytes), %q", a, len(a), b)
		}
	})
}
