package migrations_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// ordersView is the recipe's view on ClickHouse 18.16, which has only
// visitParamExtract* (JSONExtract* came in 19.x). Those want no space after
// the colon, and PostgreSQL writes jsonb as {"key": value}: hence replaceAll.
var ordersView = migrations.View{EventType: "order.created", Table: "orders_created", Columns: []migrations.ViewColumn{
	{Name: "order_id", Expr: jsonb18("String", "order_id")},
	{Name: "amount", Expr: "toDecimal64(" + jsonb18("Float", "amount") + ", 2)"},
}}

// jsonb18 extracts a top-level key of jsonb text on ClickHouse 18.16.
func jsonb18(kind, key string) string {
	return "visitParamExtract" + kind + "(replaceAll(event_context, '\": ', '\":'), '" + key + "')"
}

func openCH(t *testing.T) (driver.Conn, string) {
	t.Helper()
	db := testenv.NewClickHouseDB(t)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{testenv.ClickHouseAddr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, db
}

// cdc migrate makes a typed table and a materialized view per configured
// event type, idempotently; the view routes inserted events by type.
func TestViewsAreCreatedAndRoute(t *testing.T) {
	ctx := context.Background()
	conn, db := openCH(t)
	signups := migrations.View{EventType: "user.signed_up", Table: "signups", Columns: []migrations.ViewColumn{
		{Name: "user", Expr: jsonb18("String", "user")}}}
	c := migrations.ClickHouse{Database: db, Table: "events", Views: []migrations.View{ordersView, signups}}
	applied, err := migrations.ApplyClickHouse(ctx, conn, c)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"clickhouse/view table orders_created", "clickhouse/materialized view orders_created_mv",
		"clickhouse/view table signups", "clickhouse/materialized view signups_mv"} {
		if !slices.Contains(applied, want) {
			t.Errorf("applied %v, lacks %q", applied, want)
		}
	}
	if again, err := migrations.ApplyClickHouse(ctx, conn, c); err != nil || len(again) != 0 {
		t.Fatalf("second run: applied %v, %v; want nothing", again, err)
	}
	cols := columnTypes(t, conn, db, "orders_created")
	if want := "id Int64, event_date_time DateTime, _fingerprint UInt64, order_id String, amount Decimal(18, 2)"; cols != want {
		t.Errorf("orders_created columns %q, want %q", cols, want)
	}
	var engine, sorting string
	if err := conn.QueryRow(ctx, "SELECT engine, sorting_key FROM system.tables WHERE database = ? AND name = 'orders_created'", db).Scan(&engine, &sorting); err != nil ||
		engine != "MergeTree" || sorting != "id" {
		t.Errorf("orders_created: engine %q order by %q (%v), want MergeTree by id", engine, sorting, err)
	}

	insertEvents(t, conn, db, []event{
		{1, "order.created", `{"order_id": "A-1", "amount": 12.5}`},
		{2, "user.signed_up", `{"user": "ünï"}`},
		{3, "order.created", `{"order_id": "A-2", "amount": 3}`},
		{4, "order.shipped", `{"order_id": "A-1"}`},
	})
	if got := query(t, conn, "SELECT groupArray(concat(toString(id), ':', order_id, ':', toString(amount))) FROM (SELECT * FROM `"+db+"`.orders_created ORDER BY id)"); got != "['1:A-1:12.50','3:A-2:3.00']" {
		t.Errorf("orders_created holds %s", got)
	}
	if got := query(t, conn, "SELECT groupArray(concat(toString(id), ':', user)) FROM `"+db+"`.signups"); got != "['2:ünï']" {
		t.Errorf("signups holds %s", got)
	}
}

// migrate refuses a view whose table exists with other columns, naming
// them, and an expression the server cannot evaluate, naming the error;
// nothing of that view is created.
func TestViewRefusals(t *testing.T) {
	ctx := context.Background()
	conn, db := openCH(t)
	if err := conn.Exec(ctx, "CREATE TABLE `"+db+"`.orders_created (id Int64, event_date_time DateTime, _fingerprint UInt64, order_id UInt64, note String) ENGINE = MergeTree ORDER BY id"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, "CREATE TABLE `"+db+"`.taken_mv (id Int64) ENGINE = MergeTree ORDER BY id"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		view    migrations.View
		wantErr string
	}{
		{"table with other columns", ordersView,
			"view orders_created (event_type \"order.created\"): table `" + db + "`.`orders_created` exists with other columns than the view fills: " +
				"has order_id UInt64 where the view makes String, lacks amount Decimal(18, 2), has note String, which the view does not fill"},
		{"expression the server lacks", migrations.View{EventType: "x", Table: "x_typed", Columns: []migrations.ViewColumn{{Name: "a", Expr: "JSONExtractString(event_context, 'a')"}}},
			"the columns' expressions do not work on the events table (check views[].columns): code: 46, message: Unknown function JSONExtractString"},
		{"view name taken", migrations.View{EventType: "x", Table: "taken", Columns: []migrations.ViewColumn{{Name: "a", Expr: "event_context"}}},
			"`" + db + "`.`taken_mv` exists and is a MergeTree table, not the materialized view migrate makes: rename it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := migrations.ApplyClickHouse(ctx, conn, migrations.ClickHouse{Database: db, Table: "events", Views: []migrations.View{tc.view}})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v\nwant one containing %q", err, tc.wantErr)
			}
			if n := query(t, conn, fmt.Sprintf("SELECT count() FROM system.tables WHERE database = '%s' AND name = '%s'", db, migrations.ViewName(tc.view.Table))); tc.name != "view name taken" && n != "0" {
				t.Errorf("the view was created anyway")
			}
		})
	}
}

func columnTypes(t *testing.T, conn driver.Conn, db, table string) string {
	t.Helper()
	return query(t, conn, fmt.Sprintf("SELECT arrayStringConcat(groupArray(concat(name, ' ', type)), ', ') FROM (SELECT name, type FROM system.columns WHERE database = '%s' AND table = '%s')", db, table))
}

// query returns the single value of q as text.
func query(t *testing.T, conn driver.Conn, q string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), "SELECT toString(("+q+"))").Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

type event struct {
	id      int64
	typ     string
	context string
}

// insertEvents writes events straight into the events table, as one INSERT.
func insertEvents(t *testing.T, conn driver.Conn, db string, events []event) {
	t.Helper()
	b, err := conn.PrepareBatch(context.Background(), "INSERT INTO `"+db+"`.events (id, event_type, event_date_time, event_context, _fingerprint)")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if err := b.Append(e.id, e.typ, time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC), e.context, uint64(e.id)*7); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}
