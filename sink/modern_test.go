//go:build chdb

package sink

// The round-trip checks of roundtrip_test.go on a current ClickHouse (26.x):
// libchdb.so, the engine behind clickhouse-local, embedded in the test
// process (package internal/chdb). Built only with the chdb tag: run them
// with `make test-modern`, which fetches the library (scripts/chdb.sh) and
// sets CDC_TEST_CHDB_LIB; without it the test binary fails at start.

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/internal/chdb"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

func TestMain(m *testing.M) {
	code := m.Run()
	chdb.CloseShared()
	os.Exit(code)
}

// modernEngine is the embedded engine with a database of the test's own;
// the sink runs on it through OpenConn, with its normal Write path.
func modernEngine(t *testing.T) *testEngine {
	t.Helper()
	eng, db := chdb.ForTest(t, 24, 0)
	return &testEngine{name: "ClickHouse " + eng.Version() + " (embedded)", modern: true, conn: eng, db: db,
		open: func(t *testing.T, table string) *ClickHouse {
			t.Helper()
			s, err := OpenConn(context.Background(), eng, Options{Addr: []string{"chdb"}, Database: db, Table: table})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}}
}

func TestCapturedValuesModern(t *testing.T) {
	runCells(t, modernEngine(t), capturedRows(t))
}

func TestRejectedRowOfLaterRelationModern(t *testing.T) {
	runLaterRunRejected(t, modernEngine(t), capturedRows(t))
}

func TestMigratedTableModern(t *testing.T) {
	runMigrated(t, modernEngine(t), capturedRows(t), []schemaColumn{
		{"id", "Int64", ""},
		{"event_type", "LowCardinality(String)", ""},
		{"event_date_time", "DateTime64(6, 'UTC')", ""},
		{"environment", "LowCardinality(String)", ""},
		{"event_context", "String", ""},
		{"metadata_version", "Int64", ""},
		{"created_at", "DateTime64(6, 'UTC')", ""},
		{"_lsn", "UInt64", ""},
		{"_seq", "UInt64", ""},
		{"_fingerprint", "UInt64", ""},
		{"_inserted_at", "DateTime64(6, 'UTC')", "DEFAULT now64(6)"},
	})
}

// A batch whose rows fall into more partitions than one INSERT may take
// (max_partitions_per_insert_block; ClickHouse 18 has no such limit) is split
// until each part fits: neither rejected nor retried forever.
func TestBatchOverTooManyPartitionsIsSplitModern(t *testing.T) {
	e := modernEngine(t)
	ctx := context.Background()
	if _, err := migrations.ApplyClickHouse(ctx, e.conn, migrations.ClickHouse{Database: e.db, Table: "events"}); err != nil {
		t.Fatal(err)
	}
	// The embedded engine is one session: the setting holds for the
	// sink's INSERTs until it is set back.
	if err := e.conn.Exec(ctx, "SET max_partitions_per_insert_block = 4"); err != nil {
		t.Fatal(err)
	}
	defer e.conn.Exec(ctx, "SET max_partitions_per_insert_block = 100")
	s := e.open(t, "events")
	res, err := s.Write(ctx, spreadOverMonths(rowsAt(100, seqIDs(1, 12)...)))
	if err != nil || res.Inserted != 12 || len(res.Rejected) != 0 {
		t.Fatalf("write over 12 partitions, at most 4 per INSERT: %+v, %v; want all 12 inserted", res, err)
	}
	var n, u uint64
	if err := e.conn.QueryRow(ctx, "SELECT count(), uniqExact(id) FROM `"+e.db+"`.events").Scan(&n, &u); err != nil {
		t.Fatal(err)
	}
	if n != 12 || u != 12 {
		t.Errorf("count %d uniq %d, want 12", n, u)
	}
}

// spreadOverMonths gives row i an event_date_time in month i+1: one
// partition each in the migrated table (PARTITION BY toYYYYMM).
func spreadOverMonths(rows []Row) []Row {
	for i := range rows {
		rows[i].Values = append([]any(nil), rows[i].Values...)
		rows[i].Values[2] = time.Date(2026, time.Month(1+i%12), 1, 0, 0, 0, 0, time.UTC)
	}
	return rows
}

// A NULL into Nullable columns of a current server (DateTime64 among them)
// is stored as NULL, never as the type's default (1970-01-01).
func TestNullIntoNullableColumnsModern(t *testing.T) {
	e := modernEngine(t)
	ctx := context.Background()
	if err := e.conn.Exec(ctx, "CREATE TABLE `"+e.db+"`.events (id Int64, created_at Nullable(DateTime64(6, 'UTC')), event_date_time Nullable(DateTime('UTC')), "+
		"note Nullable(String), n Nullable(Int64), _lsn UInt64, _seq UInt64, _fingerprint UInt64) ENGINE = MergeTree ORDER BY id"); err != nil {
		t.Fatal(err)
	}
	s := e.open(t, "events")
	rel := &decoder.Relation{ID: 1, Name: "event_outbox", Columns: []decoder.Column{
		{Name: "id", TypeOID: pgtype.Int8OID}, {Name: "created_at", TypeOID: pgtype.TimestampOID}, {Name: "event_date_time", TypeOID: pgtype.TimestampOID},
		{Name: "note", TypeOID: pgtype.TextOID}, {Name: "n", TypeOID: pgtype.Int8OID},
	}}
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	rows := []Row{
		{Pos: Position{LSN: 10, Seq: 0}, ID: 1, Relation: rel, Values: []any{int64(1), nil, nil, nil, nil}},
		{Pos: Position{LSN: 10, Seq: 1}, ID: 2, Relation: rel, Values: []any{int64(2), ts, ts, "x", int64(7)}},
	}
	if res, err := s.Write(ctx, rows); err != nil || res.Inserted != 2 {
		t.Fatalf("write: %+v, %v", res, err)
	}
	var nulls, values uint64
	if err := e.conn.QueryRow(ctx, "SELECT countIf(created_at IS NULL AND event_date_time IS NULL AND note IS NULL AND n IS NULL), "+
		"countIf(created_at IS NOT NULL AND event_date_time IS NOT NULL AND note = 'x' AND n = 7) FROM `"+e.db+"`.events").Scan(&nulls, &values); err != nil {
		t.Fatal(err)
	}
	if nulls != 1 || values != 1 {
		t.Errorf("rows with NULLs stored as NULL: %d, rows with values: %d; want 1 and 1", nulls, values)
	}
}
