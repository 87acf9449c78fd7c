package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// A column of a type the sink cannot convert to, of a name the outbox has,
// is a *SchemaError at Open naming the table, the column and its type
// (issue 22). A column the outbox does not have is ClickHouse's to fill,
// and one the outbox gains later stops the batch (retried until the table
// is fixed) instead of failing its rows.
func TestUnconvertibleColumnIsASchemaError(t *testing.T) {
	ctx := context.Background()
	addr, db, conn := testDatabase(t)
	for table, extra := range map[string]string{"tags": "tags Array(String)", "lasterr": "last_error Array(String)"} {
		if err := conn.Exec(ctx, fmt.Sprintf("CREATE TABLE `%s`.%s (id Int64, event_type String, %s, "+
			"_lsn UInt64, _seq UInt64, _fingerprint UInt64) ENGINE = MergeTree ORDER BY id", db, table, extra)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, table string
		source      []string
		want        string // in the SchemaError; empty: Open succeeds
	}{
		{"a producer's column the outbox has", "tags", []string{"id", "event_type", "tags"}, "has tags Array(String)"},
		{"a column the outbox does not have", "tags", []string{"id", "event_type"}, ""},
		{"cdc's own outbox column", "lasterr", nil, "has last_error Array(String)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(ctx, Options{Addr: []string{addr}, Database: db, Table: tt.table, SourceColumns: tt.source})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				s.Close()
				return
			}
			var schemaErr *SchemaError
			if !errors.As(err, &schemaErr) {
				t.Fatalf("open: %v, want a *SchemaError", err)
			}
			for _, w := range []string{"`" + db + "`.`" + tt.table + "`", tt.want} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}

	// The outbox gained tags after Open: the batch stops, no row is rejected.
	s, err := Open(ctx, Options{Addr: []string{addr}, Database: db, Table: "tags"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rel := &decoder.Relation{ID: 1, Name: "event_outbox", Columns: []decoder.Column{
		{Name: "id", TypeOID: pgtype.Int8OID}, {Name: "event_type", TypeOID: pgtype.TextOID}, {Name: "tags", TypeOID: pgtype.TextArrayOID}}}
	res, err := s.Write(ctx, []Row{{Pos: Position{LSN: 10}, ID: 1, Relation: rel, Values: []any{int64(1), "x", "{a,b}"}}})
	var schemaErr *SchemaError
	if !errors.As(err, &schemaErr) || !strings.Contains(err.Error(), "has tags Array(String)") || len(res.Rejected) != 0 {
		t.Errorf("write of a row with tags: %+v, %v; want a *SchemaError naming tags and no rejected row", res, err)
	}
}

// testDatabase returns the test server's address, a database of the
// test's own on it and a connection, closed when the test ends.
func testDatabase(t *testing.T) (addr, db string, conn driver.Conn) {
	t.Helper()
	addr, db = testenv.ClickHouseAddr(t), testenv.NewClickHouseDB(t)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return addr, db, conn
}
