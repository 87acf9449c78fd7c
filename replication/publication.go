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
	var version int
	if err := q.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return fmt.Errorf("postgres: check publication %q: server version: %w", publication, err)
	}
	c := pubCheck{publication: publication, schema: schema, name: name,
		qualified: pgx.Identifier{schema, name}.Sanitize(), qpub: pgx.Identifier{publication}.Sanitize()}
	if err := c.read(ctx, q, version); err != nil {
		return err
	}
	if err := c.judge(); err != nil || version < pg15 {
		return err
	}
	return c.checkFilter(ctx, q)
}

// pubCheck is one run of CheckPublication: what the catalogs say about the
// publication and the outbox table.
type pubCheck struct {
	publication, schema, name string
	qualified, qpub           string // quoted schema.name and publication

	pubExists, tableExists, inserts, root, covered, allTables bool
	relkind                                                   string
	others                                                    *string // other tables published, if any
}

const runMigrate = "run `cdc migrate`"

func (c *pubCheck) fail(problem, fix string) error {
	return &PublicationError{Publication: c.publication, Table: c.schema + "." + c.name, Problem: problem, Fix: fix}
}

// read fills the check from pg_publication, pg_class and
// pg_publication_tables in one statement.
func (c *pubCheck) read(ctx context.Context, q Querier, version int) error {
	viaRoot := "false"
	if version >= pg13 {
		viaRoot = "p.pubviaroot"
	}
	err := q.QueryRow(ctx, `SELECT p.oid IS NOT NULL, c.oid IS NOT NULL, coalesce(p.pubinsert, false),
	       coalesce(`+viaRoot+`, false), coalesce(p.puballtables, false), coalesce(c.relkind::text, ''),
	       EXISTS (SELECT 1 FROM pg_publication_tables pt WHERE pt.pubname = $1 AND pt.schemaname = $3 AND pt.tablename = $4),
	       (SELECT string_agg(format('%I.%I', pt.schemaname, pt.tablename), ', ' ORDER BY pt.schemaname, pt.tablename)
	          FROM pg_publication_tables pt WHERE pt.pubname = $1 AND NOT (pt.schemaname = $3 AND pt.tablename = $4))
	  FROM (SELECT 1) AS one
	  LEFT JOIN pg_publication p ON p.pubname = $1
	  LEFT JOIN pg_class c ON c.oid = to_regclass($2)`, c.publication, c.qualified, c.schema, c.name).
		Scan(&c.pubExists, &c.tableExists, &c.inserts, &c.root, &c.allTables, &c.relkind, &c.covered, &c.others)
	if err != nil {
		return fmt.Errorf("postgres: check publication %q: %w", c.publication, err)
	}
	return nil
}

// judge returns the first problem the catalogs show, with its fix.
func (c *pubCheck) judge() error {
	qualified, qpub, others := c.qualified, c.qpub, c.others
	switch {
	case !c.tableExists:
		return c.fail(fmt.Sprintf("cannot deliver table %s: it does not exist", qualified),
			runMigrate+", or set postgres.table to the outbox's current name if it was renamed")
	case !c.pubExists:
		return c.fail("does not exist", fmt.Sprintf("%s (it runs CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert', "+
			"publish_via_partition_root = true)), or set postgres.publication to the outbox's publication", runMigrate, qpub, qualified))
	case !c.inserts:
		return c.fail("does not publish inserts", fmt.Sprintf("run ALTER PUBLICATION %s SET (publish = 'insert', "+
			"publish_via_partition_root = true), or %s", qpub, runMigrate))
	case c.relkind == "p" && !c.root:
		// Without it each partition's rows arrive under the partition's
		// name, and pg_publication_tables lists the partitions.
		return c.fail(fmt.Sprintf("publishes the partitions of the partitioned outbox %s under their own names", qualified),
			fmt.Sprintf("run ALTER PUBLICATION %s SET (publish_via_partition_root = true), or %s", qpub, runMigrate))
	case !c.covered:
		return c.fail(fmt.Sprintf("does not contain the outbox table %s", qualified),
			fmt.Sprintf("run ALTER PUBLICATION %s ADD TABLE %s, or %s", qpub, qualified, runMigrate))
	case others != nil && c.allTables:
		// Any other table's row would stop the stream (the daemon refuses
		// rows that are not the outbox's rather than skip them).
		return c.fail(fmt.Sprintf("is FOR ALL TABLES: it publishes %s besides the outbox", *others),
			"set postgres.publication to a publication FOR TABLE "+qualified+" alone (`cdc migrate` creates it when it does not exist)")
	case others != nil:
		return c.fail(fmt.Sprintf("publishes %s besides the outbox (their rows would stop the stream)", *others),
			fmt.Sprintf("run ALTER PUBLICATION %s DROP TABLE %s, or set postgres.publication to a publication of the outbox alone", qpub, *others))
	}
	return nil
}

// checkFilter refuses a row filter, which leaves rows out of the stream for
// good, and a column list, which leaves columns out of every row (PostgreSQL
// 15+). Only a table listed by name has them (FOR ALL TABLES and TABLES IN
// SCHEMA cannot).
func (c *pubCheck) checkFilter(ctx context.Context, q Querier) error {
	var filter *string
	var columns bool
	err := q.QueryRow(ctx, `SELECT pg_get_expr(r.prqual, r.prrelid), r.prattrs IS NOT NULL
	  FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
	 WHERE p.pubname = $1 AND r.prrelid = to_regclass($2)`, c.publication, c.qualified).Scan(&filter, &columns)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("postgres: check publication %q: row filter: %w", c.publication, err)
	}
	readd := fmt.Sprintf("publish the whole table: BEGIN; ALTER PUBLICATION %s DROP TABLE %s; ALTER PUBLICATION %s ADD TABLE %s; COMMIT",
		c.qpub, c.qualified, c.qpub, c.qualified)
	switch {
	case filter != nil:
		return c.fail(fmt.Sprintf("publishes only the rows of %s WHERE %s (the others would stay pending)", c.qualified, *filter), readd)
	case columns:
		return c.fail(fmt.Sprintf("publishes only some columns of %s", c.qualified), readd)
	}
	return nil
}
