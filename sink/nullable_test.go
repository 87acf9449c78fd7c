package sink

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
)

// An adopted table may have Nullable columns: a NULL goes in as NULL, never
// as the type's default (1970-01-01 for a timestamp).
func TestNullIntoNullableColumns(t *testing.T) {
	ctx := context.Background()
	addr, db, conn := testDatabase(t)
	if err := conn.Exec(ctx, fmt.Sprintf("CREATE TABLE `%s`.events (id Int64, created_at Nullable(DateTime), note Nullable(String), n Nullable(Int64), "+
		"_lsn UInt64, _seq UInt64, _fingerprint UInt64) ENGINE = MergeTree ORDER BY id", db)); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, Options{Addr: []string{addr}, Database: db, Table: "events"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rel := &decoder.Relation{ID: 1, Name: "event_outbox", Columns: []decoder.Column{
		{Name: "id", TypeOID: pgtype.Int8OID}, {Name: "created_at", TypeOID: pgtype.TimestampOID},
		{Name: "note", TypeOID: pgtype.TextOID}, {Name: "n", TypeOID: pgtype.Int8OID},
	}}
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	rows := []Row{
		{Pos: Position{LSN: 10, Seq: 0}, ID: 1, Relation: rel, Values: []any{int64(1), nil, nil, nil}},
		{Pos: Position{LSN: 10, Seq: 1}, ID: 2, Relation: rel, Values: []any{int64(2), ts, "x", int64(7)}},
	}
	if res, err := s.Write(ctx, rows); err != nil || res.Inserted != 2 {
		t.Fatalf("write: %+v, %v", res, err)
	}
	var nulls, notNulls uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT countIf(created_at IS NULL AND note IS NULL AND n IS NULL), countIf(created_at = toDateTime('2026-01-02 03:04:05', 'UTC') AND note = 'x' AND n = 7) FROM `%s`.events", db)).
		Scan(&nulls, &notNulls); err != nil {
		t.Fatal(err)
	}
	if nulls != 1 || notNulls != 1 {
		t.Errorf("rows with NULLs stored as NULL: %d, rows with values: %d; want 1 and 1", nulls, notNulls)
	}
}
