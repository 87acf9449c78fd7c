package migrations

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
)

// View is one per-event-type table (config views:): a table of its own and
// a materialized view that copies every event of EventType from the events
// table into it as it is inserted.
//
// Exactly once holds through the view because the events table receives
// each row once: the sink looks rows up (identity and high-water mark)
// before inserting, after a restart and after an INSERT of unknown outcome,
// so a row never reaches the view twice. The table is a plain MergeTree
// ordered by id: a ReplacingMergeTree would hide nothing cdc produces and
// would merge away a reused id's new row (same id, other fingerprint).
type View struct {
	EventType string
	Table     string
	Columns   []ViewColumn
}

// ViewColumn is a column of a view's table and the expression over the
// events table that fills it; its type is the expression's type.
type ViewColumn struct{ Name, Expr string }

// ViewName is the name of the materialized view that fills table.
func ViewName(table string) string { return table + "_mv" }

// viewColumns are copied from the event into every view table: the event's
// identity (id, _fingerprint) and the time that partitions the table.
var viewColumns = []string{"id", "event_date_time", "_fingerprint"}

// applyViews makes each view's table (when missing) and its materialized
// view (when missing). A table that exists must have exactly the columns
// the view fills, with the same types; otherwise nothing of that view is
// created and the error names the columns that differ.
func applyViews(ctx context.Context, conn driver.Conn, c ClickHouse) ([]string, error) {
	var applied []string
	for _, v := range c.Views {
		if c.Cluster != "" {
			return nil, fmt.Errorf("clickhouse: views are not supported with clickhouse.cluster yet")
		}
		a, err := applyView(ctx, conn, c, v)
		if err != nil {
			return nil, fmt.Errorf("clickhouse: view %s (event_type %q): %w", v.Table, v.EventType, err)
		}
		applied = append(applied, a...)
	}
	return applied, nil
}

func applyView(ctx context.Context, conn driver.Conn, c ClickHouse, v View) ([]string, error) {
	sel := viewSelect(c, v)
	want, err := describe(ctx, conn, sel)
	if err != nil {
		return nil, fmt.Errorf("the columns' expressions do not work on the events table (check views[].columns): %w", err)
	}
	have, err := columnsOf(ctx, conn, c.Database, v.Table)
	if err != nil {
		return nil, err
	}
	table := chclient.QuoteIdent(c.Database) + "." + chclient.QuoteIdent(v.Table)
	var applied []string
	if len(have) == 0 {
		if err := conn.Exec(ctx, createViewTable(table, want)); err != nil {
			return nil, fmt.Errorf("create table %s: %w", table, err)
		}
		applied = append(applied, "clickhouse/view table "+v.Table)
	} else if diff := columnDiff(want, have); diff != "" {
		return nil, fmt.Errorf("table %s exists with other columns than the view fills: %s; drop or rename it, or change the view's columns to match (docs/analytics.md)", table, diff)
	}
	engines, err := tableEngines(ctx, conn, c.Database, ViewName(v.Table))
	if err != nil {
		return nil, err
	}
	name := chclient.QuoteIdent(c.Database) + "." + chclient.QuoteIdent(ViewName(v.Table))
	switch engine := engines[ViewName(v.Table)]; engine {
	case "MaterializedView":
		// Kept as it is: migrate cannot compare an existing view's SELECT
		// with the configured one. docs/analytics.md says how to change it.
	case "":
		if err := conn.Exec(ctx, "CREATE MATERIALIZED VIEW IF NOT EXISTS "+name+" TO "+table+" AS "+sel); err != nil {
			return nil, fmt.Errorf("create materialized view %s: %w", name, err)
		}
		applied = append(applied, "clickhouse/materialized view "+ViewName(v.Table))
	default:
		return nil, fmt.Errorf("%s exists and is a %s table, not the materialized view migrate makes: rename it", name, engine)
	}
	return applied, nil
}

// viewSelect is the view's query: the event's identity and time, then the
// configured columns, of the events of one type.
func viewSelect(c ClickHouse, v View) string {
	cols := append([]string(nil), viewColumns...)
	for i := range cols {
		cols[i] = chclient.QuoteIdent(cols[i])
	}
	for _, col := range v.Columns {
		cols = append(cols, "("+col.Expr+") AS "+chclient.QuoteIdent(col.Name))
	}
	return "SELECT " + strings.Join(cols, ", ") + " FROM " + chclient.QuoteIdent(c.Database) + "." + chclient.QuoteIdent(c.rowTable()) +
		" WHERE event_type = " + quoteString(v.EventType)
}

func quoteString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// createViewTable is the DDL of a view's table. MergeTree ordered by id
// (not Replacing: see View); partitioned by month like the events table.
func createViewTable(table string, cols []column) string {
	defs := make([]string, len(cols))
	for i, c := range cols {
		defs[i] = chclient.QuoteIdent(c.name) + " " + c.typ
	}
	return "CREATE TABLE IF NOT EXISTS " + table + " (" + strings.Join(defs, ", ") +
		") ENGINE = MergeTree PARTITION BY toYYYYMM(event_date_time) ORDER BY id"
}

type column struct{ name, typ string }

// describe returns the columns a query produces, as the server types them
// (DESCRIBE of a subquery; ClickHouse 18.16 has it too).
func describe(ctx context.Context, conn driver.Conn, query string) ([]column, error) {
	rows, err := conn.Query(ctx, "DESCRIBE TABLE ("+query+")")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []column
	for rows.Next() {
		// name, type, then a version-dependent number of String columns.
		fields := make([]string, len(rows.Columns()))
		dest := make([]any, len(fields))
		for i := range fields {
			dest[i] = &fields[i]
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		out = append(out, column{fields[0], fields[1]})
	}
	return out, rows.Err()
}

// columnsOf returns a table's columns in order (none: it does not exist).
func columnsOf(ctx context.Context, conn driver.Conn, db, table string) ([]column, error) {
	rows, err := conn.Query(ctx, "SELECT name, type FROM system.columns WHERE database = ? AND table = ?", db, table)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", db, table, err)
	}
	defer rows.Close()
	var out []column
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.name, &c.typ); err != nil {
			return nil, fmt.Errorf("read columns of %s.%s: %w", db, table, err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// columnDiff describes how have differs from want ("" when they hold the
// same names with the same types, in any order).
func columnDiff(want, have []column) string {
	types := map[string]string{}
	for _, c := range have {
		types[c.name] = c.typ
	}
	var diffs []string
	for _, c := range want {
		typ, ok := types[c.name]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("lacks %s %s", c.name, c.typ))
		case typ != c.typ:
			diffs = append(diffs, fmt.Sprintf("has %s %s where the view makes %s", c.name, typ, c.typ))
		}
		delete(types, c.name)
	}
	var extra []string
	for name, typ := range types {
		extra = append(extra, fmt.Sprintf("has %s %s, which the view does not fill", name, typ))
	}
	sort.Strings(extra)
	return strings.Join(append(diffs, extra...), ", ")
}

// checkContextType fails when clickhouse.event_context_type names a type
// explicitly and the table (made earlier, or by the user) has the other
// one: CREATE TABLE IF NOT EXISTS kept it, and cdc would silently go on
// writing the old type. auto keeps whatever the table has.
func checkContextType(ctx context.Context, conn driver.Conn, c ClickHouse, v Version) error {
	if c.EventContext != "string" && c.EventContext != "json" {
		return nil
	}
	cols, err := columnsOf(ctx, conn, c.Database, c.rowTable())
	if err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	}
	want, err := c.contextType(v)
	if err != nil {
		return err
	}
	for _, col := range cols {
		base := strings.TrimSuffix(strings.TrimPrefix(col.typ, "Nullable("), ")")
		if col.name != "event_context" || base == want || strings.HasPrefix(base, want+"(") {
			continue
		}
		return fmt.Errorf("clickhouse: clickhouse.event_context_type is %s, but %s.%s has event_context %s: convert it with ALTER TABLE %s.%s MODIFY COLUMN event_context %s (a mutation that rewrites the column), or set clickhouse.event_context_type to auto to keep it",
			c.EventContext, c.Database, c.rowTable(), col.typ, chclient.QuoteIdent(c.Database), chclient.QuoteIdent(c.rowTable()), want)
	}
	return nil
}
