package migrations_test

import (
	"context"
	"strings"
	"testing"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// TestClickHouseCluster runs cdc migrate's ClickHouse side on a real
// two-replica cluster: a fresh cluster, a user-made replicated table without
// _fingerprint (adopted: the column is added on every replica and through
// the Distributed table), and the set-ups it must refuse, naming why.
func TestClickHouseCluster(t *testing.T) {
	ctx := context.Background()
	cl := testenv.StartCHCluster(t, "migrate", 2)
	r1 := cl.Conn(t, 1)
	cl.Exec(t, 1, "CREATE DATABASE own ON CLUSTER "+cl.Name)
	cl.Exec(t, 1, `CREATE TABLE own.events_local ON CLUSTER `+cl.Name+` (id Int64, event_type String, event_date_time DateTime,
		_lsn UInt64, _seq UInt64) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/own/events_local', '{replica}')
		PARTITION BY toYYYYMM(event_date_time) ORDER BY (event_type, event_date_time, id)`)
	cl.Exec(t, 1, "CREATE TABLE own.events ON CLUSTER "+cl.Name+" AS own.events_local ENGINE = Distributed("+cl.Name+", own, events_local)")
	cl.Exec(t, 1, "CREATE DATABASE bad ON CLUSTER "+cl.Name)
	cl.Exec(t, 1, "CREATE TABLE bad.events_local ON CLUSTER "+cl.Name+" (id Int64) ENGINE = MergeTree ORDER BY id")
	cl.Exec(t, 1, "CREATE TABLE bad.plain ON CLUSTER "+cl.Name+" (id Int64) ENGINE = MergeTree ORDER BY id")
	cl.Exec(t, 1, "CREATE TABLE bad.dist AS bad.plain ENGINE = Distributed("+cl.Name+", bad, plain)")

	for _, tc := range []struct {
		name    string
		c       migrations.ClickHouse
		wantErr string
	}{
		{"fresh", migrations.ClickHouse{Database: "fresh", Table: "events", Cluster: cl.Name}, ""},
		{"adopted", migrations.ClickHouse{Database: "own", Table: "events", Cluster: cl.Name}, ""},
		{"unknown cluster", migrations.ClickHouse{Database: "x", Table: "events", Cluster: "nope"}, `cluster "nope" (clickhouse.cluster) is not in the server's <remote_servers>`},
		{"local not replicated", migrations.ClickHouse{Database: "bad", Table: "events", Cluster: cl.Name}, "bad.events_local is a MergeTree table, not Replicated*"},
		{"plain table with cluster", migrations.ClickHouse{Database: "bad", Table: "plain", Cluster: cl.Name}, "bad.plain is a MergeTree table and plain_local does not exist"},
		{"distributed without cluster", migrations.ClickHouse{Database: "bad", Table: "dist"}, "set clickhouse.cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := migrations.ApplyClickHouse(ctx, r1, tc.c)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := migrations.ApplyClickHouse(ctx, r1, tc.c); err != nil {
				t.Fatalf("second run: %v", err)
			}
			for i := 1; i <= 2; i++ {
				conn := cl.Conn(t, i)
				for _, table := range []string{"events_local", "events"} {
					var engine string
					var fp uint64
					if err := conn.QueryRow(ctx, "SELECT engine, (SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = '_fingerprint') FROM system.tables WHERE database = ? AND name = ?",
						tc.c.Database, table, tc.c.Database, table).Scan(&engine, &fp); err != nil {
						t.Fatalf("replica %d %s: %v", i, table, err)
					}
					want := "ReplicatedMergeTree"
					if table == "events" {
						want = "Distributed"
					}
					if engine != want || fp != 1 {
						t.Errorf("replica %d: %s.%s is %s with %d _fingerprint columns, want %s with 1", i, tc.c.Database, table, engine, fp, want)
					}
				}
			}
		})
	}
}
