package migrations

import (
	"context"
	"fmt"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
)

// checkTables checks, before anything is created, that the server can hold
// the configured layout and that tables already there (made by an earlier
// migrate or by the user) fit it:
//
//   - with a cluster: the cluster is in remote_servers, the server has the
//     shard and replica macros the ReplicatedMergeTree path needs, an
//     existing <table>_local is Replicated* and an existing <table> is
//     Distributed;
//   - without one: <table> is not Distributed (cdc must write where the
//     rows are stored, and needs clickhouse.cluster to find them).
//
// A user-made Replicated* <table> without a cluster is adopted as it is:
// cdc writes to it directly (see sink: quorum inserts on Replicated*).
func checkTables(ctx context.Context, conn driver.Conn, c ClickHouse) error {
	engines, err := tableEngines(ctx, conn, c.Database, c.Table, LocalTable(c.Table))
	if err != nil {
		return err
	}
	main, local := engines[c.Table], engines[LocalTable(c.Table)]
	if c.Cluster == "" {
		if main == "Distributed" {
			return fmt.Errorf("clickhouse: %s.%s is a Distributed table: set clickhouse.cluster to its cluster, so that cdc writes to the replicated table under it (%s)",
				c.Database, c.Table, LocalTable(c.Table))
		}
		return nil
	}
	if err := checkCluster(ctx, conn, c.Cluster); err != nil {
		return err
	}
	switch {
	case local != "" && !strings.HasPrefix(local, "Replicated"):
		return fmt.Errorf("clickhouse: %s.%s is a %s table, not Replicated*: with clickhouse.cluster set it must be a ReplicatedMergeTree (rename it, or unset clickhouse.cluster)",
			c.Database, LocalTable(c.Table), local)
	case main != "" && main != "Distributed" && local == "":
		return fmt.Errorf("clickhouse: %s.%s is a %s table and %s does not exist: with clickhouse.cluster set, the rows live in %s and %s is Distributed over it; "+
			"to use %s as it is, unset clickhouse.cluster (a Replicated* table is written with quorum inserts)",
			c.Database, c.Table, main, LocalTable(c.Table), LocalTable(c.Table), c.Table, c.Table)
	case main != "" && main != "Distributed":
		return fmt.Errorf("clickhouse: %s.%s is a %s table, not Distributed over %s (drop or rename it)", c.Database, c.Table, main, LocalTable(c.Table))
	}
	return nil
}

// tableEngines returns the engines of the named tables that exist.
func tableEngines(ctx context.Context, conn driver.Conn, db string, names ...string) (map[string]string, error) {
	rows, err := conn.Query(ctx, "SELECT name, engine FROM system.tables WHERE database = ?", db)
	if err != nil {
		return nil, fmt.Errorf("clickhouse: read tables of %s: %w", db, err)
	}
	defer rows.Close()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]string{}
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			return nil, fmt.Errorf("clickhouse: read tables of %s: %w", db, err)
		}
		if want[name] {
			out[name] = engine
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("clickhouse: read tables of %s: %w", db, err)
	}
	return out, nil
}

// checkCluster checks that cluster is in the server's remote_servers and
// that the server defines the macros the replicated table's path and
// replica name use, naming what is missing.
func checkCluster(ctx context.Context, conn driver.Conn, cluster string) error {
	var hosts uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.clusters WHERE cluster = ?", cluster).Scan(&hosts); err != nil {
		return fmt.Errorf("clickhouse: read system.clusters: %w", err)
	}
	if hosts == 0 {
		return fmt.Errorf("clickhouse: cluster %q (clickhouse.cluster) is not in the server's <remote_servers>; define it there or fix the name", cluster)
	}
	rows, err := conn.Query(ctx, "SELECT macro FROM system.macros")
	if err != nil {
		return fmt.Errorf("clickhouse: read system.macros: %w", err)
	}
	defer rows.Close()
	have := map[string]bool{}
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			return fmt.Errorf("clickhouse: read system.macros: %w", err)
		}
		have[m] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("clickhouse: read system.macros: %w", err)
	}
	var missing []string
	for _, m := range []string{"shard", "replica"} {
		if !have[m] {
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("clickhouse: the server lacks the macros %s that a ReplicatedMergeTree on cluster %q needs: add <macros><shard>…</shard><replica>…</replica></macros> to every server's config",
			strings.Join(missing, ", "), cluster)
	}
	return nil
}

// remakeDistributed drops <table> and creates it again ON CLUSTER with the
// same engine (sharding key included) over <table>_local, so it shows the
// columns <table>_local has now.
func remakeDistributed(ctx context.Context, conn driver.Conn, c ClickHouse) error {
	var engine string
	if err := conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = ? AND name = ?", c.Database, c.Table).Scan(&engine); err != nil {
		return fmt.Errorf("clickhouse: read the engine of %s.%s: %w", c.Database, c.Table, err)
	}
	name := chclient.QuoteIdent(c.Database) + "." + chclient.QuoteIdent(c.Table)
	on := " ON CLUSTER " + chclient.QuoteIdent(c.Cluster)
	if err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+name+on); err != nil {
		return fmt.Errorf("clickhouse: drop %s to remake it with new columns: %w", name, err)
	}
	if err := conn.Exec(ctx, "CREATE TABLE "+name+on+" AS "+chclient.QuoteIdent(c.Database)+"."+chclient.QuoteIdent(c.rowTable())+" ENGINE = "+engine); err != nil {
		return fmt.Errorf("clickhouse: create %s again over %s: %w", name, c.rowTable(), err)
	}
	return nil
}
