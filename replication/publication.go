package replication

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// PublicationError is a publication that would not deliver every insert
// into the outbox under the outbox's own name: pgoutput would leave those
// rows out of the stream (or send them under a partition's name), and they
// would stay pending forever. Fix is the command that repairs it.
type PublicationError struct {
	Publication string
	Table       string // schema.name
	Problem     string
	Fix         string
}

func (e *PublicationError) Error() string {
	return fmt.Sprintf("postgres: publication %q %s: %s", e.Publication, e.Problem, e.Fix)
}

// CheckPublication verifies that publication delivers the outbox table
// schema.name (postgres.table, split by checkpoint.SplitTable) as
// `cdc migrate` sets it up: the
// publication exists, publishes inserts, contains the table and no other
// (a row of another table stops the stream), with no row filter or column
// list, and a partitioned outbox is published via its root
// (publish_via_partition_root), so its rows arrive under the outbox's name.
// A problem is a *PublicationError naming the object and the fix.
func CheckPublication(ctx context.Context, q Querier, publication, schema, name string) error {
	qualified := pgx.Identifier{schema, name}.Sanitize()
	fail := func(problem, fix string) error {
		return &PublicationError{Publication: publication, Table: schema + "." + name, Problem: problem, Fix: fix}
	}
	qpub := pgx.Identifier{publication}.Sanitize()
	migrate := "run `cdc migrate`"

	var version int
	if err := q.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return fmt.Errorf("postgres: check publication %q: server version: %w", publication, err)
	}
	viaRoot := "false"
	if version >= pg13 {
		viaRoot = "p.pubviaroot"
	}
	var (
		pubExists, tableExists, inserts, root, covered, allTables bool
		relkind                                                   string
		others                                                    *string
	)
	err := q.QueryRow(ctx, `SELECT p.oid IS NOT NULL, c.oid IS NOT NULL, coalesce(p.pubinsert, false),
	       coalesce(`+viaRoot+`, false), coalesce(p.puballtables, false), coalesce(c.relkind::text, ''),
	       EXISTS (SELECT 1 FROM pg_publication_tables pt WHERE pt.pubname = $1 AND pt.schemaname = $3 AND pt.tablename = $4),
	       (SELECT string_agg(format('%I.%I', pt.schemaname, pt.tablename), ', ' ORDER BY pt.schemaname, pt.tablename)
	          FROM pg_publication_tables pt WHERE pt.pubname = $1 AND NOT (pt.schemaname = $3 AND pt.tablename = $4))
	  FROM (SELECT 1) AS one
	  LEFT JOIN pg_publication p ON p.pubname = $1
	  LEFT JOIN pg_class c ON c.oid = to_regclass($2)`, publication, qualified, schema, name).
		Scan(&pubExists, &tableExists, &inserts, &root, &allTables, &relkind, &covered, &others)
	if err != nil {
		return fmt.Errorf("postgres: check publication %q: %w", publication, err)
	}
	switch {
	case !tableExists:
		return fail(fmt.Sprintf("cannot deliver table %s: it does not exist", qualified),
			migrate+", or set postgres.table to the outbox's current name if it was renamed")
	case !pubExists:
		return fail("does not exist", fmt.Sprintf("%s (it runs CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert', "+
			"publish_via_partition_root = true)), or set postgres.publication to the outbox's publication", migrate, qpub, qualified))
	case !inserts:
		return fail("does not publish inserts", fmt.Sprintf("run ALTER PUBLICATION %s SET (publish = 'insert', "+
			"publish_via_partition_root = true), or %s", qpub, migrate))
	case relkind == "p" && !root:
		// Without it each partition's rows arrive under the partition's
		// name, and pg_publication_tables lists the partitions.
		return fail(fmt.Sprintf("publishes the partitions of the partitioned outbox %s under their own names", qualified),
			fmt.Sprintf("run ALTER PUBLICATION %s SET (publish_via_partition_root = true), or %s", qpub, migrate))
	case !covered:
		return fail(fmt.Sprintf("does not contain the outbox table %s", qualified),
			fmt.Sprintf("run ALTER PUBLICATION %s ADD TABLE %s, or %s", qpub, qualified, migrate))
	case others != nil && allTables:
		// Any other table's row would stop the stream (the daemon refuses
		// rows that are not the outbox's rather than skip them).
		return fail(fmt.Sprintf("is FOR ALL TABLES: it publishes %s besides the outbox", *others),
			"set postgres.publication to a publication FOR TABLE "+qualified+" alone (`cdc migrate` creates it when it does not exist)")
	case others != nil:
		return fail(fmt.Sprintf("publishes %s besides the outbox (their rows would stop the stream)", *others),
			fmt.Sprintf("run ALTER PUBLICATION %s DROP TABLE %s, or set postgres.publication to a publication of the outbox alone", qpub, *others))
	}
	if version < pg15 {
		return nil
	}
	// A row filter leaves rows out of the stream for good; a column list
	// leaves columns out of every row. Only a table listed by name has
	// them (FOR ALL TABLES and TABLES IN SCHEMA cannot).
	var filter *string
	var columns bool
	err = q.QueryRow(ctx, `SELECT pg_get_expr(r.prqual, r.prrelid), r.prattrs IS NOT NULL
	  FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
	 WHERE p.pubname = $1 AND r.prrelid = to_regclass($2)`, publication, qualified).Scan(&filter, &columns)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("postgres: check publication %q: row filter: %w", publication, err)
	}
	readd := fmt.Sprintf("publish the whole table: BEGIN; ALTER PUBLICATION %s DROP TABLE %s; ALTER PUBLICATION %s ADD TABLE %s; COMMIT",
		qpub, qualified, qpub, qualified)
	switch {
	case filter != nil:
		return fail(fmt.Sprintf("publishes only the rows of %s WHERE %s (the others would stay pending)", qualified, *filter), readd)
	case columns:
		return fail(fmt.Sprintf("publishes only some columns of %s", qualified), readd)
	}
	return nil
}
