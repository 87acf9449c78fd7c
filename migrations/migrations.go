// Package migrations creates and upgrades the schema cdc needs, idempotently:
// in PostgreSQL the outbox table (or the adoption of an existing one), its
// publication and the daemon's state tables; in ClickHouse the database and
// the events table, with column types chosen by the server's version.
//
// The SQL lives in embedded files (postgres/*.sql, clickhouse/*.sql), rendered
// with the configured names and applied in order; applied versions are
// recorded in cdc_schema_migrations on each server.
package migrations

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
)

//go:embed postgres/*.sql clickhouse/*.sql
var files embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

func load(dir string, data any) ([]migration, error) {
	entries, err := fs.Glob(files, dir+"/*.sql")
	if err != nil {
		return nil, err
	}
	sort.Strings(entries)
	var out []migration
	for _, e := range entries {
		base := path.Base(e)
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return nil, fmt.Errorf("migration %s: name must start with a number", e)
		}
		raw, err := files.ReadFile(e)
		if err != nil {
			return nil, err
		}
		tmpl, err := template.New(base).Parse(string(raw))
		if err != nil {
			return nil, fmt.Errorf("migration %s: %w", e, err)
		}
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, data); err != nil {
			return nil, fmt.Errorf("migration %s: %w", e, err)
		}
		out = append(out, migration{version: v, name: strings.TrimSuffix(base, ".sql"), sql: buf.String()})
	}
	return out, nil
}

// Postgres describes the PostgreSQL side.
type Postgres struct {
	Table       string // [schema.]name
	Publication string
}

// ApplyPostgres applies pending PostgreSQL migrations and makes sure the
// publication exists, covers the table and publishes inserts only.
func ApplyPostgres(ctx context.Context, conn *pgx.Conn, p Postgres) (applied []string, err error) {
	schema, name := checkpoint.SplitTable(p.Table)
	quoted := checkpoint.QuoteTable(p.Table)
	migs, err := load("postgres", map[string]string{
		"Table":            quoted,
		"TableLiteral":     strings.ReplaceAll(quoted, "'", "''"),
		"UnprocessedIndex": pgx.Identifier{truncate(name+"_unprocessed_idx", 63)}.Sanitize(),
		"FailedIndex":      pgx.Identifier{truncate(name+"_failed_idx", 63)}.Sanitize(),
	})
	if err != nil {
		return nil, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: begin migration: %w", err)
	}
	defer tx.Rollback(ctx)
	// Two `cdc migrate` at once must not interleave.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('outbox-cdc:migrate'))`); err != nil {
		return nil, fmt.Errorf("postgres: migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS cdc_schema_migrations (
		target TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
		applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (target, version))`); err != nil {
		return nil, fmt.Errorf("postgres: create cdc_schema_migrations: %w", err)
	}
	target := schema + "." + name
	for _, m := range migs {
		var done bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM cdc_schema_migrations WHERE target = $1 AND version = $2)`, target, m.version).Scan(&done); err != nil {
			return nil, fmt.Errorf("postgres: read cdc_schema_migrations: %w", err)
		}
		if done {
			continue
		}
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return nil, fmt.Errorf("postgres: migration %s: %w", m.name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO cdc_schema_migrations (target, version, name) VALUES ($1, $2, $3)`, target, m.version, m.name); err != nil {
			return nil, fmt.Errorf("postgres: record migration %s: %w", m.name, err)
		}
		applied = append(applied, "postgres/"+m.name)
	}
	if err := ensurePublication(ctx, tx, p.Publication, schema, name); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("postgres: commit migrations: %w", err)
	}
	return applied, nil
}

func ensurePublication(ctx context.Context, tx pgx.Tx, pub, schema, name string) error {
	qpub := pgx.Identifier{pub}.Sanitize()
	qtable := pgx.Identifier{schema, name}.Sanitize()
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, pub).Scan(&exists); err != nil {
		return fmt.Errorf("postgres: read publications: %w", err)
	}
	// Partitions are published under the parent, so one Relation serves all.
	opts := `publish = 'insert', publish_via_partition_root = true`
	if !exists {
		if _, err := tx.Exec(ctx, `CREATE PUBLICATION `+qpub+` FOR TABLE `+qtable+` WITH (`+opts+`)`); err != nil {
			return fmt.Errorf("postgres: create publication %s: %w", pub, err)
		}
		return nil
	}
	// Options first: without publish_via_partition_root, pg_publication_tables
	// lists a partitioned outbox's partitions instead of the outbox, and ADD
	// TABLE of a table already in the publication fails.
	if _, err := tx.Exec(ctx, `ALTER PUBLICATION `+qpub+` SET (`+opts+`)`); err != nil {
		return fmt.Errorf("postgres: set options of publication %s: %w", pub, err)
	}
	var covered bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)`,
		pub, schema, name).Scan(&covered); err != nil {
		return fmt.Errorf("postgres: read publication %s: %w", pub, err)
	}
	if !covered {
		if _, err := tx.Exec(ctx, `ALTER PUBLICATION `+qpub+` ADD TABLE `+qtable); err != nil {
			return fmt.Errorf("postgres: add %s.%s to publication %s: %w", schema, name, pub, err)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// ClickHouse describes the ClickHouse side.
type ClickHouse struct {
	Database string
	Table    string
	// Cluster, when set, is a cluster of the servers' remote_servers: the
	// rows then live in LocalTable(Table), a ReplicatedMergeTree made ON
	// CLUSTER, and Table is a Distributed table over it.
	Cluster string
	// EventContext is the type event_context gets in a table migrate
	// creates (clickhouse.event_context_type, which `cdc migrate` always
	// passes): "auto": JSON where the server's JSON type is generally
	// available (Version.JSON), else String; "string"; "json" (an error on a
	// server without it). "" is String, the layout of every earlier
	// version, for callers that do not choose (tests of the String layout).
	// An existing table keeps its type, unless the choice is explicit and
	// differs: then migrate fails with the ALTER.
	EventContext string
	// Views are the per-event-type tables and their materialized views
	// (see applyViews).
	Views []View
	// Check, when set, is asked about the table before the migrations are
	// recorded: an adopted table cdc cannot deliver into fails the
	// migration, and is not recorded as migrated.
	Check func(ctx context.Context, conn driver.Conn) error
}

// LocalTable is the name of the replicated table that holds the rows when
// a cluster is configured.
func LocalTable(table string) string { return table + "_local" }

// rowTable is the table that holds the rows: Table itself on one server,
// its _local table on a cluster.
func (c ClickHouse) rowTable() string {
	if c.Cluster != "" {
		return LocalTable(c.Table)
	}
	return c.Table
}

// Version is a ClickHouse server version.
type Version struct{ Major, Minor int }

// ParseVersion parses "24.8.1.2" or "18.16.1".
func ParseVersion(s string) (Version, error) {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return Version{}, fmt.Errorf("clickhouse version %q: want major.minor", s)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return Version{}, fmt.Errorf("clickhouse version %q: want major.minor", s)
	}
	return Version{major, minor}, nil
}

// Modern reports whether the server has DateTime64, LowCardinality and data
// skipping indexes without experimental settings (20.3 and later).
func (v Version) Modern() bool { return v.Major > 20 || (v.Major == 20 && v.Minor >= 3) }

// JSON reports whether the server's JSON type is generally available: 25.3
// and later (ClickHouse's changelog, PR 77785: "The JSON data type is
// production-ready"). 24.8 to 25.2 have it only behind
// allow_experimental_json_type, which cdc does not set.
func (v Version) JSON() bool { return v.Major > 25 || (v.Major == 25 && v.Minor >= 3) }

// contextType is the type event_context gets in a table migrate creates.
func (c ClickHouse) contextType(v Version) (string, error) {
	switch c.EventContext {
	case "auto":
		if v.JSON() {
			return "JSON", nil
		}
		return "String", nil
	case "", "string":
		return "String", nil
	case "json":
		if !v.JSON() {
			return "", fmt.Errorf("clickhouse: clickhouse.event_context_type is json, but ClickHouse %d.%d has no generally available JSON type (25.3 and later have it): set it to auto or string", v.Major, v.Minor)
		}
		return "JSON", nil
	}
	return "", fmt.Errorf("clickhouse: clickhouse.event_context_type must be auto, string or json, got %q", c.EventContext)
}

// ClickHouseStatements renders the ClickHouse migrations for a server
// version: DateTime64(6, 'UTC') and LowCardinality(String) on modern servers,
// DateTime and String on 18.x, and event_context as contextType says. Each
// migration may hold several statements.
func ClickHouseStatements(v Version, c ClickHouse) ([][]string, []string, error) {
	ctxType, err := c.contextType(v)
	if err != nil {
		return nil, nil, err
	}
	data := map[string]any{
		"Context":  ctxType,
		"Database": chclient.QuoteIdent(c.Database),
		"Table":    chclient.QuoteIdent(c.Table),
		"Local":    chclient.QuoteIdent(c.rowTable()),
		"Cluster":  "",
		"ZKPath":   "/clickhouse/tables/{shard}/" + c.Database + "/" + c.rowTable(),
		"Modern":   v.Modern(),
		"Symbol":   "String",
		"Time":     "DateTime",
		"Now":      "now()",
	}
	if c.Cluster != "" {
		data["Cluster"] = chclient.QuoteIdent(c.Cluster)
	}
	if v.Modern() {
		data["Symbol"] = "LowCardinality(String)"
		data["Time"] = "DateTime64(6, 'UTC')"
		data["Now"] = "now64(6)"
	}
	migs, err := load("clickhouse", data)
	if err != nil {
		return nil, nil, err
	}
	var stmts [][]string
	var names []string
	for _, m := range migs {
		stmts = append(stmts, splitStatements(m.sql))
		names = append(names, m.name)
	}
	return stmts, names, nil
}

func splitStatements(sql string) []string {
	var out []string
	var lines []string
	for _, l := range strings.Split(sql, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "--") {
			continue
		}
		lines = append(lines, l)
	}
	for _, s := range strings.Split(strings.Join(lines, "\n"), ";") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// ApplyClickHouse creates the database and table if missing. Every statement
// is idempotent, so it also repairs a server whose data was wiped.
func ApplyClickHouse(ctx context.Context, conn driver.Conn, c ClickHouse) (applied []string, err error) {
	var version string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
		return nil, fmt.Errorf("clickhouse: read server version: %w", err)
	}
	v, err := ParseVersion(version)
	if err != nil {
		return nil, err
	}
	if err := checkTables(ctx, conn, c); err != nil {
		return nil, err
	}
	stmts, names, err := ClickHouseStatements(v, c)
	if err != nil {
		return nil, err
	}
	// What was recorded before is reported as already there; its
	// statements still run (they are idempotent), so a wiped server is
	// repaired.
	recorded, err := recordedClickHouse(ctx, conn, c.Database)
	if err != nil {
		return nil, err
	}
	var existed uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = ?", c.Database, c.Table).Scan(&existed); err != nil {
		return nil, fmt.Errorf("clickhouse: read tables of %s: %w", c.Database, err)
	}
	for i, group := range stmts {
		for _, s := range group {
			if err := conn.Exec(ctx, s); err != nil {
				return nil, fmt.Errorf("clickhouse: migration %s: %w", names[i], err)
			}
		}
		switch {
		case recorded[names[i]]:
		case existed > 0:
			// CREATE TABLE IF NOT EXISTS kept a table that was there: it is
			// adopted, not created (its columns are for sink.CheckTable).
			applied = append(applied, "clickhouse/"+names[i]+" (adopted the existing table)")
		default:
			applied = append(applied, "clickhouse/"+names[i])
		}
	}
	// Columns added after a table was created (or adopted): ClickHouse 18
	// has no ADD COLUMN IF NOT EXISTS, so look first.
	for _, col := range addedColumns {
		added, err := ensureColumn(ctx, conn, c, col.name, col.typ)
		if err != nil {
			return nil, err
		}
		if added {
			applied = append(applied, "clickhouse/add column "+col.name)
		}
	}
	if err := checkContextType(ctx, conn, c, v); err != nil {
		return nil, err
	}
	if c.Check != nil {
		if err := c.Check(ctx, conn); err != nil {
			return nil, err
		}
	}
	views, err := applyViews(ctx, conn, c)
	if err != nil {
		return nil, err
	}
	applied = append(applied, views...)
	if err := recordClickHouse(ctx, conn, c.Database, names); err != nil {
		return nil, err
	}
	return applied, nil
}

// addedColumns are the daemon's columns that tables made by earlier
// versions lack; existing rows get the type's default (0: "no fingerprint",
// recognised by id alone).
var addedColumns = []struct{ name, typ string }{
	{"_fingerprint", "UInt64"},
}

// ensureColumn adds a column the table lacks. On a cluster it goes on the
// replicated table first (ReplicatedMergeTree passes the ALTER on to its
// replicas), then on the Distributed table, which must show it for reads.
func ensureColumn(ctx context.Context, conn driver.Conn, c ClickHouse, name, typ string) (bool, error) {
	tables := []string{c.Table}
	if c.Cluster != "" {
		tables = []string{c.rowTable(), c.Table}
	}
	added := false
	for _, table := range tables {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?",
			c.Database, table, name).Scan(&n); err != nil {
			return false, fmt.Errorf("clickhouse: read columns of %s.%s: %w", c.Database, table, err)
		}
		if n > 0 {
			continue
		}
		onCluster := ""
		if c.Cluster != "" {
			onCluster = " ON CLUSTER " + chclient.QuoteIdent(c.Cluster)
		}
		if c.Cluster != "" && table == c.Table {
			// ClickHouse refuses ALTER … ON CLUSTER of a table that is not
			// replicated on a shard with internal_replication ("Table isn't
			// replicated, but shard is replicated"). A Distributed table holds
			// no rows of its own: make it again over the altered table.
			if err := remakeDistributed(ctx, conn, c); err != nil {
				return false, err
			}
			added = true
			continue
		}
		if err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s.%s%s ADD COLUMN %s %s", chclient.QuoteIdent(c.Database), chclient.QuoteIdent(table), onCluster, chclient.QuoteIdent(name), typ)); err != nil {
			return false, fmt.Errorf("clickhouse: add column %s to %s.%s: %w", name, c.Database, table, err)
		}
		added = true
	}
	return added, nil
}

// recordedClickHouse returns the migrations recorded in the database's
// cdc_schema_migrations (none when the database or the table is missing).
func recordedClickHouse(ctx context.Context, conn driver.Conn, db string) (map[string]bool, error) {
	have := map[string]bool{}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = 'cdc_schema_migrations'", db).Scan(&n); err != nil {
		return nil, fmt.Errorf("clickhouse: read cdc_schema_migrations: %w", err)
	}
	if n == 0 {
		return have, nil
	}
	rows, err := conn.Query(ctx, "SELECT name FROM "+chclient.QuoteIdent(db)+".cdc_schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("clickhouse: read cdc_schema_migrations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("clickhouse: read cdc_schema_migrations: %w", err)
		}
		have[name] = true
	}
	return have, rows.Err()
}

func recordClickHouse(ctx context.Context, conn driver.Conn, db string, names []string) error {
	tbl := chclient.QuoteIdent(db) + ".cdc_schema_migrations"
	if err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+tbl+" (name String, applied_at DateTime DEFAULT now()) ENGINE = TinyLog"); err != nil {
		return fmt.Errorf("clickhouse: create cdc_schema_migrations: %w", err)
	}
	have, err := recordedClickHouse(ctx, conn, db)
	if err != nil {
		return err
	}
	var missing []string
	for _, n := range names {
		if !have[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	// INSERT … VALUES through Exec hangs on 18.x's native protocol: use a batch.
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+tbl+" (name)")
	if err != nil {
		return fmt.Errorf("clickhouse: record migrations: %w", err)
	}
	for _, n := range missing {
		if err := batch.Append(n); err != nil {
			return fmt.Errorf("clickhouse: record migration %s: %w", n, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("clickhouse: record migrations: %w", err)
	}
	return nil
}
