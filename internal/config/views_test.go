package config

import (
	"reflect"
	"strings"
	"testing"
)

// TestViews: views: is read from the file with its columns in the order
// written, and every mistake is reported naming the entry and its line.
func TestViews(t *testing.T) {
	const good = `views:
  - event_type: order.created
    table: orders_created
    columns:
      order_id: "JSONExtractString(event_context, 'order_id')"
      amount: "JSONExtractFloat(event_context, 'amount')"
  - event_type: user.signed_up
    table: signups
    columns: {user: "JSONExtractString(event_context, 'user')"}
`
	clearEnv(t)
	t.Setenv("CDC_POSTGRES_URL", sampleURL)
	path := writeFile(t, good)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []View{
		{EventType: "order.created", Table: "orders_created", Source: "from " + path + " line 2", Columns: []ViewColumn{
			{"order_id", "JSONExtractString(event_context, 'order_id')"}, {"amount", "JSONExtractFloat(event_context, 'amount')"}}},
		{EventType: "user.signed_up", Table: "signups", Source: "from " + path + " line 7", Columns: []ViewColumn{
			{"user", "JSONExtractString(event_context, 'user')"}}},
	}
	if !reflect.DeepEqual(c.Views, want) {
		t.Fatalf("views\n got %+v\nwant %+v", c.Views, want)
	}

	for _, tc := range []struct {
		name, file, env, want string // want: exact, FILE replaced by the path
	}{
		{"not a list", "views: {a: b}\n", "",
			`config file FILE line 1: views must be a list of entries with event_type, table and columns`},
		{"entry not a mapping", "views:\n  - orders\n", "",
			`config file FILE line 2: views[0] must be a mapping with event_type, table and columns`},
		{"unknown key", "views:\n  - event_type: a\n    tabel: t\n", "",
			`config file FILE line 3: unknown key "views[0].tabel" (an entry of views has event_type, table and columns)`},
		{"columns not a mapping", "views:\n  - event_type: a\n    table: t\n    columns: [a, b]\n", "",
			`config file FILE line 4: views[0].columns must be a mapping of column name to ClickHouse expression`},
		{"no event_type", "views:\n  - table: t\n    columns: {x: a}\n", "",
			`views[0].event_type is required: the event_type whose events go to the table (from FILE line 2)`},
		{"bad table name", "views:\n  - {event_type: a, table: orders-created, columns: {x: a}}\n", "",
			`views[0].table must be a table name of letters, digits and underscores, not starting with a digit, got "orders-created" (from FILE line 2)`},
		{"the events table", "views:\n  - {event_type: a, table: events, columns: {x: a}}\n", "",
			`views[0].table must not be "events": cdc's own tables are not view tables (from FILE line 2)`},
		{"same table twice", "views:\n  - {event_type: a, table: t, columns: {x: a}}\n  - {event_type: b, table: t, columns: {x: a}}\n", "",
			`views[1].table names the table of views[0] too ("t"): each view needs its own table (from FILE line 3)`},
		{"no columns", "views:\n  - {event_type: a, table: t}\n", "",
			`views[0].columns must list at least one column: name: expression, e.g. order_id: "JSONExtractString(event_context, 'order_id')" (from FILE line 2)`},
		{"reserved column", "views:\n  - {event_type: a, table: t, columns: {id: a}}\n", "",
			`views[0].columns.id is reserved: every view table has id, event_date_time, _fingerprint, copied from the event (from FILE line 2)`},
		{"empty expression", "views:\n  - {event_type: a, table: t, columns: {x: ''}}\n", "",
			`views[0].columns.x must be a ClickHouse expression over the events table, e.g. JSONExtractString(event_context, 'order_id') (from FILE line 2)`},
		{"with a cluster", "views:\n  - {event_type: a, table: t, columns: {x: a}}\n", "CDC_CLICKHOUSE_CLUSTER=c1",
			`views[0] is not supported with clickhouse.cluster yet: the view would have to be made on every replica's events_local (docs/analytics.md) (from FILE line 2)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("CDC_POSTGRES_URL", sampleURL)
			if k, v, ok := strings.Cut(tc.env, "="); ok {
				t.Setenv(k, v)
			}
			path := writeFile(t, tc.file)
			_, err := Load(path)
			if want := strings.ReplaceAll(tc.want, "FILE", path); err == nil || err.Error() != want {
				t.Fatalf("error\n got: %v\nwant: %s", err, want)
			}
		})
	}
}

func TestEventContextType(t *testing.T) {
	for _, tc := range []struct{ env, want, err string }{
		{"", "auto", ""},
		{"JSON", "json", ""},
		{"string", "string", ""},
	} {
		clearEnv(t)
		t.Setenv("CDC_POSTGRES_URL", sampleURL)
		t.Setenv("CDC_CLICKHOUSE_EVENT_CONTEXT_TYPE", tc.env)
		c, err := Load("")
		switch {
		case tc.err != "":
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: error %v, want %s", tc.env, err, tc.err)
			}
		case err != nil || c.ClickHouse.EventContextType != tc.want:
			t.Errorf("%q: got %+v, %v; want %s", tc.env, c, err, tc.want)
		}
	}
}
