package migrations

import (
	"context"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
)

// MarkingColumns are the outbox columns that marking a row processed sets
// (checkpoint's UPDATE … SET status, updated_at, last_error). An index whose
// key, expression or predicate names one of them makes every marking a
// non-HOT update: the new row version needs an entry in every index, and the
// walsender decodes that WAL too (migration 0005 measured 2.2 -> 4.4 µs of
// PostgreSQL CPU per marked row).
var MarkingColumns = []string{"status", "updated_at", "last_error"}

// MarkingIndex is an index on the outbox that keeps marking from being HOT.
type MarkingIndex struct {
	Name       string // schema-qualified
	Definition string // pg_get_indexdef
	Column     string // the first of MarkingColumns it names
	Drop       string // the statement that removes it
}

// Cost says what such an index costs, for a log line or a report.
const MarkingIndexCost = "marking rows processed is no longer a HOT update: each marked row adds an entry to every index of the outbox and more WAL for the walsender to decode (about twice the PostgreSQL CPU per marked row); cdc needs no such index, drop it once nothing else (e.g. the old poller) queries by it"

var (
	markingColumnRE = regexp.MustCompile(`\b(status|updated_at|last_error)\b`)
	usingRE         = regexp.MustCompile(` USING \w+ `)
)

// FindMarkingIndexes lists the indexes on table (or on its partitions; for
// an index of a partitioned outbox, its parent only) whose definition names
// a column of MarkingColumns. `cdc migrate` creates none: an adopted outbox
// keeps the indexes it had, e.g. one serving the old poller.
func FindMarkingIndexes(ctx context.Context, conn *pgx.Conn, table string) ([]MarkingIndex, error) {
	schema, name := checkpoint.SplitTable(table)
	rows, err := conn.Query(ctx, `
		SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), pg_get_indexdef(i.indexrelid),
		       c.relkind = 'I', con.conname, i.indrelid::regclass::text
		FROM pg_index i
		JOIN pg_class c ON c.oid = i.indexrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
		WHERE (i.indrelid = $1::regclass OR i.indrelid IN (SELECT relid FROM pg_partition_tree($1::regclass)))
		  AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
		ORDER BY 1`, pgx.Identifier{schema, name}.Sanitize())
	if err != nil {
		return nil, fmt.Errorf("postgres: list the indexes of %s: %w", table, err)
	}
	var found []MarkingIndex
	for rows.Next() {
		var name, def, rel string
		var partitioned bool
		var constraint *string
		if err := rows.Scan(&name, &def, &partitioned, &constraint, &rel); err != nil {
			return nil, fmt.Errorf("postgres: list the indexes of %s: %w", table, err)
		}
		// The key, expressions and predicate follow "USING method (".
		col := markingColumnRE.FindString(indexBody(def))
		if col == "" {
			continue
		}
		drop := "DROP INDEX CONCURRENTLY " + name + ";"
		switch {
		case constraint != nil:
			drop = fmt.Sprintf("ALTER TABLE %s DROP CONSTRAINT %s;", rel, pgx.Identifier{*constraint}.Sanitize())
		case partitioned: // CONCURRENTLY does not work on a partitioned index
			drop = "DROP INDEX " + name + ";"
		}
		found = append(found, MarkingIndex{Name: name, Definition: def, Column: col, Drop: drop})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list the indexes of %s: %w", table, err)
	}
	return found, nil
}

// indexBody is the part of an index definition after "USING method": its
// columns or expressions and its WHERE clause, without the index's and the
// table's names (which could contain the words).
func indexBody(def string) string {
	if i := usingRE.FindStringIndex(def); i != nil {
		return def[i[1]:]
	}
	return def
}
