package sink

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
)

// SchemaError is a ClickHouse table cdc cannot write to: it does not exist
// (Missing), lacks the daemon's columns, or has a column whose type cannot
// hold what cdc writes there. No retry fixes it; Fix is the statement (or
// the command) that does.
type SchemaError struct {
	Table   string // `db`.`table`
	Missing bool   // the table does not exist
	Problem string
	Fix     string
}

func (e *SchemaError) Error() string {
	return fmt.Sprintf("clickhouse: table %s %s: %s", e.Table, e.Problem, e.Fix)
}

// bookkeepingTypes are the types of the daemon's own columns: positions and
// fingerprints are compared and stored as UInt64 (the high-water mark query
// compares _lsn with a number).
var bookkeepingTypes = []struct{ name, typ string }{
	{ColumnLSN, "UInt64"},
	{ColumnSeq, "UInt64"},
	{ColumnFingerprint, "UInt64"},
}

// outboxColumns are the outbox's documented columns (docs/producers.md),
// which cdc sends when the table has them: a table column of one of these
// names, or of a name in Options.SourceColumns, must have a type cdc
// converts to.
var outboxColumns = map[string]bool{
	"id": true, "event_type": true, "event_date_time": true, "environment": true, "event_context": true,
	"metadata_version": true, "status": true, "created_at": true, "updated_at": true,
	"last_error": true, "attempts": true,
}

// idTypes may hold the outbox's bigint ids (and are what the id lookups
// compare with).
var idTypes = map[string]bool{"Int64": true, "UInt64": true}

// CheckTable reads the columns of database.table and says whether cdc can
// deliver into it: it exists, has id and the bookkeeping columns
// (_lsn, _seq, _fingerprint as UInt64) and every outbox column it has is of
// a type cdc converts to. The error is a *SchemaError naming the exact
// ALTER TABLE that fixes it; `cdc migrate` runs it after migrating, so it
// never reports "applied" for a table `cdc run` would refuse.
func CheckTable(ctx context.Context, conn driver.Conn, database, table string) error {
	cols, err := readColumns(ctx, conn, database, table)
	if err != nil {
		return err
	}
	return checkColumns(database, table, cols, nil)
}

func readColumns(ctx context.Context, conn driver.Conn, database, table string) ([]tableColumn, error) {
	qualified := chclient.QuoteIdent(database) + "." + chclient.QuoteIdent(table)
	rows, err := conn.Query(ctx, "SELECT name, type, default_kind FROM system.columns WHERE database = ? AND table = ?", database, table)
	if err != nil {
		return nil, fmt.Errorf("clickhouse: read columns of %s: %w", qualified, err)
	}
	defer rows.Close()
	var cols []tableColumn
	for rows.Next() {
		var col tableColumn
		if err := rows.Scan(&col.name, &col.typ, &col.defaultKind); err != nil {
			return nil, fmt.Errorf("clickhouse: read columns of %s: %w", qualified, err)
		}
		cols = append(cols, col)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("clickhouse: read columns of %s: %w", qualified, err)
	}
	return cols, nil
}

// checkColumns is CheckTable's rule on columns already read; source are
// more names of columns the outbox has (Options.SourceColumns).
func checkColumns(database, table string, cols []tableColumn, source []string) error {
	qualified := chclient.QuoteIdent(database) + "." + chclient.QuoteIdent(table)
	if len(cols) == 0 {
		return &SchemaError{Table: qualified, Missing: true, Problem: "does not exist",
			Fix: "run `cdc migrate` (it creates it), or set clickhouse.database and clickhouse.table to the events table"}
	}
	byName := make(map[string]tableColumn, len(cols))
	for _, c := range cols {
		byName[c.name] = c
	}
	var add, modify, problems []string
	for _, b := range bookkeepingTypes {
		c, ok := byName[b.name]
		switch {
		case !ok:
			add = append(add, "ADD COLUMN "+chclient.QuoteIdent(b.name)+" "+b.typ)
			problems = append(problems, "lacks "+b.name)
		case c.typ != b.typ:
			modify = append(modify, "MODIFY COLUMN "+chclient.QuoteIdent(b.name)+" "+b.typ)
			problems = append(problems, fmt.Sprintf("has %s %s, not %s", b.name, c.typ, b.typ))
		}
	}
	if id, ok := byName["id"]; !ok {
		problems = append(problems, "lacks id")
		add = append(add, "ADD COLUMN `id` Int64")
	} else if !idTypes[id.typ] {
		problems = append(problems, fmt.Sprintf("has id %s, which cannot hold the outbox's bigint ids", id.typ))
		modify = append(modify, "MODIFY COLUMN `id` Int64")
	}
	for _, c := range cols {
		if computed(c) || !(outboxColumns[c.name] || slices.Contains(source, c.name)) {
			continue
		}
		if _, err := converterFor(c.typ); err != nil {
			problems = append(problems, unconvertible(c, err))
			modify = append(modify, "MODIFY COLUMN "+chclient.QuoteIdent(c.name)+" String")
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return &SchemaError{Table: qualified, Problem: strings.Join(problems, ", ") + " (cdc needs them to deliver exactly once)",
		Fix: alterFix(qualified, append(add, modify...))}
}

// computed reports whether ClickHouse computes a column itself: cdc never
// sends it.
func computed(c tableColumn) bool { return c.defaultKind == "MATERIALIZED" || c.defaultKind == "ALIAS" }

// unconvertible says that column c has a type cdc cannot write to (err).
func unconvertible(c tableColumn, err error) string {
	return fmt.Sprintf("has %s %s, a type cdc cannot write the outbox's values to (%v)", c.name, c.typ, err)
}

// alterFix is the Fix of a SchemaError: the ALTER TABLE that repairs it.
func alterFix(qualified string, changes []string) string {
	return "run ALTER TABLE " + qualified + " " + strings.Join(changes, ", ") +
		" (`cdc migrate` does not change the columns of an existing table)"
}
