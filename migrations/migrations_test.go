package migrations_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// The seed's table as the polling design's Django migration left it: no
// defaults for the bookkeeping columns, rows in every status.
const seedTable = `CREATE TABLE event_outbox (
    id BIGSERIAL PRIMARY KEY,
    event_type VARCHAR(255) NOT NULL,
    event_date_time TIMESTAMP NOT NULL,
    environment VARCHAR(50) NOT NULL,
    event_context JSONB NOT NULL,
    metadata_version BIGINT NOT NULL,
    status VARCHAR(20) NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL)`

func TestPostgresMigrations(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup []string
		rows  int
	}{
		{name: "empty database"},
		{name: "seed table with rows", setup: []string{seedTable,
			`INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version, status, created_at, updated_at)
			 SELECT 'x', now(), 'prod', '{"a": 1}', 1, (ARRAY['pending', 'processed', 'failed'])[1 + g % 3], now(), now()
			 FROM generate_series(1, 30) g`}, rows: 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, testenv.NewPostgresDB(t))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			for _, q := range tc.setup {
				if _, err := conn.Exec(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			p := migrations.Postgres{Table: "public.event_outbox", Publication: "cdc_outbox"}
			applied, err := migrations.ApplyPostgres(ctx, conn, p)
			if err != nil {
				t.Fatal(err)
			}
			if len(applied) == 0 {
				t.Fatal("first run applied nothing")
			}
			if again, err := migrations.ApplyPostgres(ctx, conn, p); err != nil || len(again) != 0 {
				t.Fatalf("second run: applied %v, err %v; want nothing", again, err)
			}
			var n int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM event_outbox`).Scan(&n); err != nil || n != tc.rows {
				t.Fatalf("rows after migrate: %d (%v), want %d", n, err, tc.rows)
			}
			// Producers can omit every bookkeeping column.
			var status string
			var attempts int
			if err := conn.QueryRow(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
			  VALUES ('y', now(), 'prod', '{}', 1) RETURNING status, attempts`).Scan(&status, &attempts); err != nil {
				t.Fatal(err)
			}
			if status != "pending" || attempts != 0 {
				t.Errorf("defaults: status %q attempts %d", status, attempts)
			}
			var pubInsert, pubUpdate bool
			if err := conn.QueryRow(ctx, `SELECT pubinsert, pubupdate FROM pg_publication WHERE pubname = 'cdc_outbox'`).Scan(&pubInsert, &pubUpdate); err != nil {
				t.Fatal(err)
			}
			if !pubInsert || pubUpdate {
				t.Errorf("publication publishes insert=%v update=%v, want inserts only", pubInsert, pubUpdate)
			}
			var covered bool
			if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = 'cdc_outbox' AND tablename = 'event_outbox')`).Scan(&covered); err != nil || !covered {
				t.Errorf("publication does not cover event_outbox (%v)", err)
			}
			// Marking rows processed must stay a HOT update: no index may
			// mention a column it sets, and pages keep room for new versions.
			var onMarked []string
			rows, err := conn.Query(ctx, `SELECT indexdef FROM pg_indexes WHERE tablename = 'event_outbox'
			  AND (indexdef LIKE '%status%' OR indexdef LIKE '%updated_at%' OR indexdef LIKE '%last_error%')`)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var def string
				if err := rows.Scan(&def); err != nil {
					t.Fatal(err)
				}
				onMarked = append(onMarked, def)
			}
			if len(onMarked) > 0 {
				t.Errorf("indexes on columns the marking sets: %v", onMarked)
			}
			var failedIdx bool
			if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE tablename = 'event_outbox' AND indexdef LIKE '%WHERE (attempts > 0)%')`).Scan(&failedIdx); err != nil || !failedIdx {
				t.Errorf("no partial index on failed rows (%v)", err)
			}
			var opts []string
			if err := conn.QueryRow(ctx, `SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = 'event_outbox'::regclass`).Scan(&opts); err != nil || !slices.Contains(opts, "fillfactor=50") {
				t.Errorf("outbox options %v (%v), want fillfactor=50", opts, err)
			}
			var failedWithoutAttempt int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE status = 'failed' AND attempts = 0`).Scan(&failedWithoutAttempt); err != nil || failedWithoutAttempt != 0 {
				t.Errorf("%d failed rows without an attempt (%v): retry-failed would not find them", failedWithoutAttempt, err)
			}
		})
	}
}

func TestClickHouseMigrations(t *testing.T) {
	ctx := context.Background()
	db := testenv.NewClickHouseDB(t)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{testenv.ClickHouseAddr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := 0; i < 2; i++ {
		if _, err := migrations.ApplyClickHouse(ctx, conn, migrations.ClickHouse{Database: db, Table: "events"}); err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
	}
	want := map[string]string{"id": "Int64", "event_type": "String", "event_date_time": "DateTime", "event_context": "String",
		"metadata_version": "Int64", "created_at": "DateTime", "_lsn": "UInt64", "_seq": "UInt64"}
	rows, err := conn.Query(ctx, "SELECT name, type FROM system.columns WHERE database = ? AND table = 'events'", db)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for rows.Next() {
		var n, typ string
		if err := rows.Scan(&n, &typ); err != nil {
			t.Fatal(err)
		}
		got[n] = typ
	}
	for n, typ := range want {
		if got[n] != typ {
			t.Errorf("column %s: %q, want %q (18.x types)", n, got[n], typ)
		}
	}
	var partition, sorting string
	if err := conn.QueryRow(ctx, "SELECT partition_key, sorting_key FROM system.tables WHERE database = ? AND name = 'events'", db).Scan(&partition, &sorting); err != nil {
		t.Fatal(err)
	}
	if partition != "toYYYYMM(event_date_time)" || sorting != "event_type, event_date_time, id" {
		t.Errorf("partition %q sorting %q", partition, sorting)
	}
}

func TestClickHouseStatementsByVersion(t *testing.T) {
	for _, tc := range []struct {
		v          migrations.Version
		want, deny string
	}{
		{migrations.Version{18, 16}, "event_date_time  DateTime,", "DateTime64"},
		{migrations.Version{24, 8}, "DateTime64(6, 'UTC')", "INDEX_NONE"},
		{migrations.Version{24, 8}, "LowCardinality(String)", "x-none"},
		{migrations.Version{24, 8}, "INDEX _lsn_minmax", "x-none"},
		// The JSON type is generally available from 25.3 (experimental in 24.8 to 25.2).
		{migrations.Version{18, 16}, "event_context    String,", "JSON"},
		{migrations.Version{25, 2}, "event_context    String,", "JSON"},
		{migrations.Version{25, 3}, "event_context    JSON,", "event_context    String"},
		{migrations.Version{26, 1}, "event_context    JSON,", "event_context    String"},
	} {
		stmts, _, err := migrations.ClickHouseStatements(tc.v, migrations.ClickHouse{Database: "d", Table: "t", EventContext: "auto"})
		if err != nil {
			t.Fatal(err)
		}
		all := ""
		for _, g := range stmts {
			for _, s := range g {
				all += s + ";\n"
			}
		}
		if !strings.Contains(all, tc.want) || strings.Contains(all, tc.deny) {
			t.Errorf("%v: DDL lacks %q or has %q:\n%s", tc.v, tc.want, tc.deny, all)
		}
	}
}

// clickhouse.event_context_type overrides the choice by version; json on a
// server without a generally available JSON type is an error naming the key.
func TestEventContextTypeOverride(t *testing.T) {
	for _, tc := range []struct {
		v            migrations.Version
		choice, want string
		wantErr      string
	}{
		{migrations.Version{26, 1}, "auto", "event_context    JSON,", ""},
		{migrations.Version{26, 1}, "string", "event_context    String,", ""},
		{migrations.Version{25, 3}, "json", "event_context    JSON,", ""},
		{migrations.Version{18, 16}, "auto", "event_context    String,", ""},
		{migrations.Version{26, 1}, "", "event_context    String,", ""}, // callers that do not choose
		{migrations.Version{25, 2}, "json", "", "clickhouse.event_context_type is json, but ClickHouse 25.2 has no generally available JSON type (25.3 and later have it): set it to auto or string"},
		{migrations.Version{18, 16}, "json", "", "clickhouse.event_context_type is json, but ClickHouse 18.16"},
	} {
		stmts, _, err := migrations.ClickHouseStatements(tc.v, migrations.ClickHouse{Database: "d", Table: "t", EventContext: tc.choice})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v %s: err %v, want %q", tc.v, tc.choice, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !strings.Contains(strings.Join(stmts[0], ";"), tc.want) {
			t.Errorf("%v %s: %v, %v; want %q", tc.v, tc.choice, stmts, err, tc.want)
		}
	}
}

// A table made before fingerprints existed (or adopted) gets the column; its
// rows read 0, which the sink recognises by id alone.
func TestClickHouseAddsFingerprintToOlderTable(t *testing.T) {
	ctx := context.Background()
	addr, db := testenv.ClickHouseAddr(t), testenv.NewClickHouseDB(t)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Exec(ctx, "CREATE TABLE `"+db+"`.events (id Int64, event_type String, event_date_time DateTime, environment String, "+
		"event_context String, metadata_version Int64, created_at DateTime, _lsn UInt64, _seq UInt64) ENGINE = MergeTree ORDER BY id"); err != nil {
		t.Fatal(err)
	}
	for run := 1; run <= 2; run++ {
		applied, err := migrations.ApplyClickHouse(ctx, conn, migrations.ClickHouse{Database: db, Table: "events"})
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		added := slices.Contains(applied, "clickhouse/add column _fingerprint")
		if added != (run == 1) {
			t.Errorf("run %d: applied %v; want the column added on the first run only", run, applied)
		}
	}
	var typ string
	if err := conn.QueryRow(ctx, "SELECT type FROM system.columns WHERE database = ? AND table = 'events' AND name = '_fingerprint'", db).Scan(&typ); err != nil || typ != "UInt64" {
		t.Errorf("_fingerprint column: type %q, %v; want UInt64", typ, err)
	}
}
