//go:build chdb

package modern

import (
	"context"
	"strings"
	"testing"

	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// The view recipe on a current server: columns read JSON paths of
// event_context (no JSONExtract needed), migrate types the table by them,
// and rows written by the sink are routed by event type.
func TestViewWithJSONPathsModern(t *testing.T) {
	eng, db := engine(t)
	views := []migrations.View{
		{EventType: "order.created", Table: "orders_created", Columns: []migrations.ViewColumn{
			{Name: "order_id", Expr: "event_context.order_id::String"},
			{Name: "amount", Expr: "event_context.amount::Float64"},
			{Name: "user", Expr: "event_context.customer.name::String"}}},
		{EventType: "user.signed_up", Table: "signups", Columns: []migrations.ViewColumn{
			{Name: "user", Expr: "event_context.user::String"}}},
	}
	migrateAndWrite(t, eng, migrations.ClickHouse{Database: db, Table: "events", EventContext: "auto", Views: views}, rows(
		[2]string{"order.created", `{"order_id": "A-1", "amount": 12.5, "customer": {"name": "Ann"}}`},
		[2]string{"user.signed_up", `{"user": "ünï"}`},
		[2]string{"order.shipped", `{"order_id": "A-1"}`},
		[2]string{"order.created", `{"order_id": "A-2", "amount": 3}`},
	))
	cols := column(t, eng, db, "SELECT concat(name, ' ', type) FROM system.columns WHERE database = '"+db+"' AND table = 'orders_created' ORDER BY position")
	if got, want := strings.Join(cols, ", "), "id Int64, event_date_time DateTime64(6, 'UTC'), _fingerprint UInt64, order_id String, amount Float64, user String"; got != want {
		t.Errorf("orders_created columns: %s, want %s", got, want)
	}
	if got := column(t, eng, db, "SELECT concat(toString(id), ':', order_id, ':', toString(amount), ':', user) FROM DB.orders_created ORDER BY id"); strings.Join(got, " ") != "1:A-1:12.5:Ann 4:A-2:3:" {
		t.Errorf("orders_created holds %q", got)
	}
	if got := column(t, eng, db, "SELECT concat(toString(id), ':', user) FROM DB.signups"); strings.Join(got, " ") != "2:ünï" {
		t.Errorf("signups holds %q", got)
	}
}

// An explicit clickhouse.event_context_type that the existing table does
// not have fails migrate with the ALTER that converts it; auto keeps it.
func TestExplicitContextTypeOfExistingTableModern(t *testing.T) {
	eng, db := engine(t)
	ctx := context.Background()
	c := migrations.ClickHouse{Database: db, Table: "events", EventContext: "string"}
	if _, err := migrations.ApplyClickHouse(ctx, eng, c); err != nil {
		t.Fatal(err)
	}
	c.EventContext = "json"
	_, err := migrations.ApplyClickHouse(ctx, eng, c)
	if want := "clickhouse.event_context_type is json, but " + db + ".events has event_context String: convert it with ALTER TABLE `" + db + "`.`events` MODIFY COLUMN event_context JSON"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want one containing %q", err, want)
	}
	c.EventContext = "auto"
	if _, err := migrations.ApplyClickHouse(ctx, eng, c); err != nil {
		t.Fatalf("auto keeps the existing String: %v", err)
	}
}
