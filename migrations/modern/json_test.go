//go:build chdb

package modern

import (
	"context"
	"strings"
	"testing"

	"github.com/outbox-cdc/outbox-cdc/migrations"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// jsonCases are jsonb texts as PostgreSQL sends them and what ClickHouse's
// JSON type gives back (toString): keys sorted, whitespace gone, numbers
// re-typed (Int64, UInt64 or Float64) and re-formatted, empty nested
// objects and null members dropped. docs/analytics.md quotes this table.
var jsonCases = []struct{ name, in, out string }{
	{"nested object", `{"user": {"name": "Ann", "tags": ["a", "b"]}, "n": 1}`,
		`{"n":1,"user":{"name":"Ann","tags":["a","b"]}}`},
	{"array of mixed values", `{"items": [1, 2.5, "x", {"k": null}, [true]]}`,
		`{"items":[1,2.5,"x",{},[true]]}`},
	{"numbers", `{"big": 12345678901234567890.5, "u64": 18446744073709551615, "i64": -9223372036854775808, "dec": 0.1000000000000000055511151231257827, "one": 1.0, "half": 1.50}`,
		`{"big":12345678901234567000,"dec":0.1,"half":1.5,"i64":-9223372036854775808,"one":1,"u64":18446744073709551615}`},
	{"unicode and escapes", `{"ü": "日本 ✓", "esc": "a\"b\\c\n"}`,
		`{"esc":"a\"b\\c\n","ü":"日本 ✓"}`},
	{"empty object", `{}`, `{}`},
	{"nested empty object and array", `{"e": {}, "a": [], "x": 1}`, `{"a":[],"x":1}`},
	{"key order (jsonb: shorter keys first)", `{"b": 1, "aa": 2, "ccc": 3}`, `{"aa":2,"b":1,"ccc":3}`},
	{"a user", `{"user": "ann", "amount": 1.5}`, `{"amount":1.5,"user":"ann"}`},
}

// cdc migrate makes event_context JSON on a current server (auto), the
// sink fills it, and analysts can query paths such as event_context.user.
func TestEventContextJSONModern(t *testing.T) {
	eng, db := engine(t)
	var events [][2]string
	for _, c := range jsonCases {
		events = append(events, [2]string{"t", c.in})
	}
	migrateAndWrite(t, eng, migrations.ClickHouse{Database: db, Table: "events", EventContext: "auto"}, rows(events...))
	if typ := column(t, eng, db, "SELECT type FROM system.columns WHERE database = '"+db+"' AND table = 'events' AND name = 'event_context'"); len(typ) != 1 || typ[0] != "JSON" {
		t.Fatalf("event_context is %v, want JSON", typ)
	}
	got := column(t, eng, db, "SELECT toString(event_context) FROM DB.events ORDER BY id")
	for i, c := range jsonCases {
		if i >= len(got) || got[i] != c.out {
			t.Errorf("%s: %s came back as %q, want %s", c.name, c.in, got[min(i, len(got)-1)], c.out)
		}
	}
	users := column(t, eng, db, "SELECT toString(event_context.user) FROM DB.events WHERE event_context.user IS NOT NULL")
	if strings.Join(users, ",") != "ann" {
		t.Errorf("event_context.user: %q, want ann", users)
	}
	types := column(t, eng, db, "SELECT concat(dynamicType(event_context.big), ' ', dynamicType(event_context.u64), ' ', dynamicType(event_context.i64)) FROM DB.events WHERE id = 3")
	if len(types) != 1 || types[0] != "Float64 UInt64 Int64" {
		t.Errorf("types of the numbers: %q, want Float64 UInt64 Int64", types)
	}
}

// An integer beyond Int64/UInt64 (or a number beyond Float64) is valid
// jsonb but the JSON type refuses the document (code 117): the row is a
// poison row, rejected alone and marked failed by cdc, while its batch goes
// in. With clickhouse.event_context_type: string it is stored as written.
func TestJSONRefusesNumbersBeyond64BitsModern(t *testing.T) {
	eng, db := engine(t)
	ctx := context.Background()
	huge := []string{`{"n": 123456789012345678901234567890}`, `{"n": -9223372036854775809}`, `{"n": 1e400}`}
	events := [][2]string{{"t", `{"ok": 1}`}}
	for _, h := range huge {
		events = append(events, [2]string{"t", h})
	}
	for _, c := range []struct {
		choice   string
		rejected int
	}{{"auto", len(huge)}, {"string", 0}} {
		t.Run(c.choice, func(t *testing.T) {
			table := "events_" + c.choice
			if _, err := migrations.ApplyClickHouse(ctx, eng, migrations.ClickHouse{Database: db, Table: table, EventContext: c.choice}); err != nil {
				t.Fatal(err)
			}
			s, err := sink.OpenConn(ctx, eng, sink.Options{Addr: []string{"chdb"}, Database: db, Table: table})
			if err != nil {
				t.Fatal(err)
			}
			res, err := s.Write(ctx, rows(events...))
			if err != nil || len(res.Rejected) != c.rejected || res.Inserted != len(events)-c.rejected {
				t.Fatalf("write: %+v, %v; want %d rejected", res, err, c.rejected)
			}
			for _, r := range res.Rejected {
				if sink.Classify(r.Err) != sink.RowData {
					t.Errorf("row %d rejected for %v, not a row-data error", r.ID, r.Err)
				}
			}
			if c.choice == "string" {
				got := column(t, eng, db, "SELECT event_context FROM DB."+table+" ORDER BY id")
				for i, e := range events {
					if got[i] != e[1] {
						t.Errorf("String kept %q as %q", e[1], got[i])
					}
				}
			}
		})
	}
}
