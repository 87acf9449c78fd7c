package chclient_test

import (
	"context"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// Each name is quoted as expected, and the real server reads the quoted
// name back as the name itself: a table created under it is listed in
// system.tables under exactly that name.
func TestQuoteIdent(t *testing.T) {
	tests := []struct{ name, want string }{
		{"events", "`events`"},
		{"my events", "`my events`"},
		{"a`b", "`a\\`b`"},
		{`a\b`, "`a\\\\b`"},
		{"a\\`b", "`a\\\\\\`b`"}, // a backslash before a backquote: both escaped
		{`trailing\`, "`trailing\\\\`"},
		{"ünïcode.dot", "`ünïcode.dot`"},
		{"", "``"},
	}
	for _, tt := range tests {
		if got := chclient.QuoteIdent(tt.name); got != tt.want {
			t.Errorf("chclient.QuoteIdent(%q) = %s, want %s", tt.name, got, tt.want)
		}
	}

	ctx := context.Background()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{testenv.ClickHouseAddr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	db := testenv.NewClickHouseDB(t)
	for _, tt := range tests[:len(tests)-1] { // ClickHouse refuses an empty name
		if err := conn.Exec(ctx, "CREATE TABLE "+chclient.QuoteIdent(db)+"."+chclient.QuoteIdent(tt.name)+" (x UInt8) ENGINE = Memory"); err != nil {
			t.Errorf("create table %s: %v", chclient.QuoteIdent(tt.name), err)
			continue
		}
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = ?", db, tt.name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("table created as %s is not listed as %q", chclient.QuoteIdent(tt.name), tt.name)
		}
	}
}
