//go:build chdb

package modern

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/internal/chdb"
	"github.com/outbox-cdc/outbox-cdc/migrations"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

func TestMain(m *testing.M) {
	code := m.Run()
	chdb.CloseShared()
	os.Exit(code)
}

// engine is the embedded engine with a database of the test's own; the
// JSON type is generally available from 25.3.
func engine(t *testing.T) (*chdb.Engine, string) { return chdb.ForTest(t, 25, 3) }

// outbox is the outbox's relation as pgoutput describes it.
var outbox = &decoder.Relation{ID: 1, Namespace: "public", Name: "event_outbox", Columns: []decoder.Column{
	{Name: "id", TypeOID: pgtype.Int8OID, Key: true}, {Name: "event_type", TypeOID: pgtype.VarcharOID},
	{Name: "event_date_time", TypeOID: pgtype.TimestampOID}, {Name: "environment", TypeOID: pgtype.VarcharOID},
	{Name: "event_context", TypeOID: pgtype.JSONBOID}, {Name: "metadata_version", TypeOID: pgtype.Int8OID},
	{Name: "created_at", TypeOID: pgtype.TimestampOID},
}}

// rows are outbox rows as the decoder hands them to the sink: jsonb as
// PostgreSQL's text of it.
func rows(events ...[2]string) []sink.Row {
	at := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	out := make([]sink.Row, len(events))
	for i, e := range events {
		id := int64(i + 1)
		out[i] = sink.Row{Pos: sink.Position{LSN: 100, Seq: uint64(i)}, ID: id, Relation: outbox,
			Values: []any{id, e[0], at, "test", e[1], int64(1), at}}
	}
	return out
}

// migrateAndWrite applies the migrations as `cdc migrate` does and writes
// rows through the sink, as `cdc run` does.
func migrateAndWrite(t *testing.T, eng *chdb.Engine, c migrations.ClickHouse, rs []sink.Row) {
	t.Helper()
	ctx := context.Background()
	for run := 1; run <= 2; run++ {
		if _, err := migrations.ApplyClickHouse(ctx, eng, c); err != nil {
			t.Fatalf("migrate (run %d): %v", run, err)
		}
	}
	s, err := sink.OpenConn(ctx, eng, sink.Options{Addr: []string{"chdb"}, Database: c.Database, Table: c.Table})
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Write(ctx, rs)
	if err != nil || res.Inserted != len(rs) || len(res.Rejected) != 0 {
		t.Fatalf("write %d rows: %+v, %v", len(rs), res, err)
	}
}

func column(t *testing.T, eng *chdb.Engine, db, q string) []string {
	t.Helper()
	res, err := eng.Query(context.Background(), strings.ReplaceAll(q, "DB", "`"+db+"`"))
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer res.Close()
	var out []string
	for res.Next() {
		var s string
		if err := res.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}
