//go:build chdb

package sink

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/outbox-cdc/outbox-cdc/internal/chdb"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// TestClusterOnModernServer checks on ClickHouse 26 (the embedded engine)
// what of the cluster set-up can be checked without ZooKeeper/Keeper and
// remote_servers, which the embedded engine has not (it refuses
// ReplicatedMergeTree and Distributed tables):
//
//   - every statement `cdc migrate` runs for a cluster parses, with its
//     ON CLUSTER clause and ReplicatedMergeTree engine, on a current server;
//   - the server has insert_quorum_parallel, on by default, so the sink
//     turns it off (Mode.SerialQuorum), and accepts every quorum setting the
//     sink sends with the values it sends, and select_sequential_consistency.
//
// Not checked here (no Keeper on this machine): creating the tables on a
// 24+ cluster, and the quorum/status node a serial quorum leaves in Keeper
// while it is open (docs/scaling.md says so).
func TestClusterOnModernServer(t *testing.T) {
	ctx := context.Background()
	eng, err := chdb.Shared()
	if err != nil {
		t.Fatal(err)
	}
	v, err := migrations.ParseVersion(eng.Version())
	if err != nil {
		t.Fatal(err)
	}
	stmts, names, err := migrations.ClickHouseStatements(v, migrations.ClickHouse{Database: "analytics", Table: "events", Cluster: "analytics_cluster"})
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for i, group := range stmts {
		for _, s := range group {
			var formatted string
			if err := eng.QueryRow(ctx, "SELECT formatQuery(?)", s).Scan(&formatted); err != nil {
				t.Errorf("migration %s does not parse on ClickHouse %s: %v\n%s", names[i], eng.Version(), err, s)
			}
			all = append(all, s)
		}
	}
	text := strings.Join(all, "\n")
	for _, want := range []string{"ON CLUSTER `analytics_cluster`", "ReplicatedMergeTree('/clickhouse/tables/{shard}/analytics/events_local', '{replica}')", "Distributed("} {
		if !strings.Contains(text, want) {
			t.Errorf("the cluster migration lacks %s:\n%s", want, text)
		}
	}

	c := &ClickHouse{conn: eng}
	serial, err := c.hasSetting(ctx, "insert_quorum_parallel")
	if err != nil || !serial {
		t.Fatalf("ClickHouse %s: insert_quorum_parallel known = %v (%v), want true", eng.Version(), serial, err)
	}
	var def string
	if err := eng.QueryRow(ctx, "SELECT value FROM system.settings WHERE name = 'insert_quorum_parallel'").Scan(&def); err != nil || def != "1" {
		t.Errorf("insert_quorum_parallel defaults to %q (%v): the sink turns it off either way", def, err)
	}
	settings := Mode{Quorum: 2, SerialQuorum: true}.quorumSettings(0)
	settings["select_sequential_consistency"] = 1
	var clause []string
	for k, val := range settings {
		clause = append(clause, fmt.Sprintf("%s = %v", k, val))
	}
	sort.Strings(clause)
	var one uint8
	if err := eng.QueryRow(ctx, "SELECT 1 SETTINGS "+strings.Join(clause, ", ")).Scan(&one); err != nil {
		t.Errorf("ClickHouse %s refuses the sink's quorum settings %v: %v", eng.Version(), clause, err)
	}
	if !slices.Contains(clause, "insert_quorum_parallel = 0") {
		t.Errorf("the quorum settings %v do not turn parallel quorums off", clause)
	}
}
