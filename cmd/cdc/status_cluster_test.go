package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/status"
)

// With clickhouse.cluster set, `cdc status` shows every replica's rows of
// <table>_local and its replication queue (system.replicas), on a real
// two-replica cluster; a replica that is down is named in the verdict and
// makes the status degraded (exit 5). /readyz of the daemon writing to
// the cluster says that inserts lost their quorum (insert_quorum auto: both
// replicas) until the replica is back.
func TestStatusShowsClusterReplicas(t *testing.T) {
	bin := cdcBinary(t)
	cl := testenv.StartCHCluster(t, "statuscluster", 2)
	pgURL := testenv.NewPostgresDB(t)
	const db = "cdc"
	o := testenv.OpenOutbox(t, pgURL, cl.Addrs[0], db)
	env := []string{
		"CDC_POSTGRES_URL=" + pgURL,
		"CDC_POSTGRES_SLOT=" + o.Slot,
		"CDC_CLICKHOUSE_ADDR=" + strings.Join(cl.Addrs, ","),
		"CDC_CLICKHOUSE_CLUSTER=" + cl.Name,
		"CDC_CLICKHOUSE_DATABASE=" + db,
		"CDC_BATCH_FLUSH_INTERVAL=100ms",
		"CDC_LOG_FORMAT=json",
	}
	migrate(t, bin, env)
	port := testenv.FreePort(t)
	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
	env = withListen(env, port)
	d := startDaemon(t, bin, env, t.TempDir(), "cdc")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			t.Logf("cdc log:\n%s", b)
		}
	})
	waitReason(t, "streaming", readyz, 200, "ready")
	ids := o.MustInsert(30, true)
	o.WaitCH(uint64(len(ids)), 60*time.Second)
	for i := 1; i <= 2; i++ {
		cl.SyncReplica(t, i, db, "events_local")
	}

	stdout, stderr, code, _ := runStatusBinary(t, bin, env, "status", "--json")
	if code != 0 {
		t.Fatalf("status with both replicas up: exit %d\n%s\n%s", code, stdout, stderr)
	}
	r := decodeReport(t, stdout)
	if len(r.ClickHouseReplicas) != 2 {
		t.Fatalf("clickhouse_replicas = %+v, want 2 replicas", r.ClickHouseReplicas)
	}
	for i, rep := range r.ClickHouseReplicas {
		if rep.Host != cl.Addrs[i] || rep.Error != nil || stDeref(rep.Rows) != uint64(len(ids)) ||
			rep.QueueSize == nil || stDeref(rep.TotalReplicas) != 2 || stDeref(rep.ActiveReplicas) != 2 || stDeref(rep.ReadOnly) {
			t.Errorf("replica %d: %s; want host %s, %d rows, a queue size, 2 of 2 active, writable", i+1, mustJSON(t, rep), cl.Addrs[i], len(ids))
		}
	}
	stdout, _, _, _ = runStatusBinary(t, bin, env, "status")
	if !strings.Contains(stdout, "replica 1.2") || !strings.Contains(stdout, cl.Addrs[1]+": 30 rows, queue 0") {
		t.Errorf("status table without the replicas:\n%s", stdout)
	}

	cl.Stop(t, 2)
	stdout, stderr, code, _ = runStatusBinary(t, bin, env, "status", "--json")
	r = decodeReport(t, stdout)
	want := "clickhouse replica " + cl.Addrs[1] + " (shard 1) unavailable"
	if code != int(status.Degraded) || !strings.Contains(strings.Join(r.Problems, "\n"), want) ||
		r.ClickHouseReplicas[1].Error == nil || stDeref(r.ClickHouseReplicas[0].Rows) != uint64(len(ids)) {
		t.Errorf("status with replica 2 down: exit %d, problems %q, replicas %s; want exit 5 and a problem %q\n%s",
			code, r.Problems, mustJSON(t, r.ClickHouseReplicas), want, stderr)
	}
	more := o.MustInsert(5, true)
	waitReason(t, "quorum lost", readyz, 503, "clickhouse insert quorum lost (inserts are retried): ")
	cl.Start(t, 2)
	o.WaitCH(uint64(len(ids)+len(more)), 60*time.Second)
	waitReason(t, "ready again", readyz, 200, "ready")
	if code := d.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("cdc run exited %d", code)
	}
}

func decodeReport(t *testing.T, s string) status.Report {
	t.Helper()
	var r status.Report
	if err := json.Unmarshal([]byte(s), &r); err != nil {
		t.Fatalf("status --json: %v\n%s", err, s)
	}
	return r
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
