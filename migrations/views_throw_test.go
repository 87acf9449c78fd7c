package migrations_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/migrations"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// What a view that throws for one row does on ClickHouse 18.16, written by
// the real sink (docs/analytics.md quotes it): the INSERT fails after the
// events table and the views before the throwing one have the whole block;
// the sink finds every row stored and sends none again, so nothing is
// duplicated anywhere, and the throwing view's table lacks the whole block,
// not only the bad row: it must be rebuilt from events.
func TestViewThatThrowsLosesItsBlockOnlyThere(t *testing.T) {
	ctx := context.Background()
	conn, db := openCH(t)
	if _, err := migrations.ApplyClickHouse(ctx, conn, migrations.ClickHouse{Database: db, Table: "events", Views: []migrations.View{ordersView}}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE `" + db + "`.strict (id Int64, ok UInt8) ENGINE = MergeTree ORDER BY id",
		"CREATE MATERIALIZED VIEW `" + db + "`.strict_mv TO `" + db + "`.strict AS SELECT id, throwIf(id = 5) AS ok FROM `" + db + "`.events",
	} {
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	s, err := sink.Open(ctx, sink.Options{Addr: []string{testenv.ClickHouseAddr(t)}, Database: db, Table: "events"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rel := &decoder.Relation{ID: 1, Name: "event_outbox", Columns: []decoder.Column{
		{Name: "id", TypeOID: pgtype.Int8OID}, {Name: "event_type", TypeOID: pgtype.TextOID},
		{Name: "event_date_time", TypeOID: pgtype.TimestampOID}, {Name: "event_context", TypeOID: pgtype.JSONBOID}}}
	var rows []sink.Row
	for id := int64(1); id <= 8; id++ {
		rows = append(rows, sink.Row{Pos: sink.Position{LSN: 100, Seq: uint64(id)}, ID: id, Relation: rel,
			Values: []any{id, "order.created", time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC), `{"order_id": "A", "amount": 1}`}})
	}
	res, err := s.Write(ctx, rows)
	if err != nil || res.Inserted != 8 || len(res.Rejected) != 0 {
		t.Fatalf("write: %+v, %v; want all 8 counted delivered (they are in events)", res, err)
	}
	for table, want := range map[string]string{"events": "8 8", "orders_created": "8 8", "strict": "0 0"} {
		if got := query(t, conn, "SELECT concat(toString(count()), ' ', toString(uniqExact(id))) FROM `"+db+"`."+table); got != want {
			t.Errorf("%s: count and distinct ids %s, want %s", table, got, want)
		}
	}
}
