package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ClusterName is the remote_servers cluster scripts/testenv-cluster.sh
// configures: its shards, each with its replicas.
const ClusterName = "cdc_cluster"

// CHCluster is a private replicated ClickHouse for one test: a standalone
// ZooKeeper and the servers of one or more shards, started by
// scripts/testenv.sh (cluster-up) in their own directory on their own ports.
// Tests kill, stop and restart its servers and its ZooKeeper; they never
// touch the shared servers.
//
// Servers are numbered 1..Shards*Replicas, shard by shard: servers 1..R
// are the replicas of shard 1, R+1..2R those of shard 2, and so on.
type CHCluster struct {
	Name     string   // the cluster in remote_servers
	Addrs    []string // native addresses of servers 1..N
	Replicas int      // replicas per shard
	ZKAddr   string
	dir      string
	scripted
}

// StartCHCluster starts ZooKeeper and replicas ClickHouse servers, the
// replicas of one shard (macros shard=01, replica=r1…rN). Everything is
// stopped and removed when the test ends (kept when it failed).
func StartCHCluster(t testing.TB, name string, replicas int) *CHCluster {
	t.Helper()
	return StartCHShards(t, name, 1, replicas)
}

// StartCHShards starts ZooKeeper and shards × replicas ClickHouse servers:
// server I is replica rI of shard (I-1)/replicas+1 (macros shard=01, 02, …),
// and remote_servers lists every shard with its replicas, so a table made
// ON CLUSTER exists on every server and a Distributed table reads every
// shard. Everything is stopped and removed when the test ends (kept when
// it failed).
func StartCHShards(t testing.TB, name string, shards, replicas int) *CHCluster {
	t.Helper()
	script := mustEnv(t, EnvScript)
	dir := serverDir(t, name)
	servers := shards * replicas
	base := clusterBasePort(t, servers)
	c := &CHCluster{Name: ClusterName, Replicas: replicas, ZKAddr: fmt.Sprintf("127.0.0.1:%d", base+90), dir: dir}
	for i := 0; i < servers; i++ {
		c.Addrs = append(c.Addrs, fmt.Sprintf("127.0.0.1:%d", base+10*i))
	}
	c.scripted = scripted{what: "cluster " + strings.Join(c.Addrs, ","), script: script}
	c.env = append(os.Environ(),
		"CDC_TESTENV_DIR="+dir,
		"CDC_TESTENV_CLUSTER_DIR="+dir+"/cluster",
		fmt.Sprintf("CDC_TESTENV_CLUSTER_SHARDS=%d", shards),
		fmt.Sprintf("CDC_TESTENV_CLUSTER_REPLICAS=%d", replicas),
		fmt.Sprintf("CDC_TESTENV_CLUSTER_BASEPORT=%d", base),
		fmt.Sprintf("CDC_TESTENV_ZKPORT=%d", base+90),
	)
	t.Cleanup(func() { c.stopAndRemove(t, dir, "cluster-down") })
	c.Script(t, "cluster-up")
	return c
}

// ShardServers returns the server numbers (1-based, for Kill, Start,
// Conn…) of the replicas of shard s (1-based).
func (c *CHCluster) ShardServers(s int) []int {
	var out []int
	for i := (s-1)*c.Replicas + 1; i <= s*c.Replicas; i++ {
		out = append(out, i)
	}
	return out
}

// clusterBasePort finds a base port below the ephemeral range (32768 on
// Linux: a client's outgoing connection can take a port there between our
// check and the server's bind) with base+10*i+{0,1,2} and base+90 (ZooKeeper)
// free: at most 9 servers.
func clusterBasePort(t testing.TB, servers int) int {
	t.Helper()
	if servers > 9 {
		t.Fatalf("testenv: a cluster of %d servers does not fit below ZooKeeper's port (base+90): at most 9", servers)
	}
	for attempt := 0; attempt < 50; attempt++ {
		base := 20000 + 100*rand.IntN(120) // 20000..31900
		ports := []int{base + 90}
		for i := 0; i < servers; i++ {
			ports = append(ports, base+10*i, base+10*i+1, base+10*i+2)
		}
		if allFree(ports) {
			return base
		}
	}
	t.Fatalf("testenv: no free port range for a %d-server cluster", servers)
	return 0
}

func allFree(ports []int) bool {
	for _, p := range ports {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return false
		}
		ln.Close()
	}
	return true
}

// Kill SIGKILLs replica i (1-based): a crash, with whatever it was doing
// cut short.
func (c *CHCluster) Kill(t testing.TB, i int) { c.Script(t, "cluster-kill-replica", fmt.Sprint(i)) }

// Stop stops replica i cleanly (SIGTERM).
func (c *CHCluster) Stop(t testing.TB, i int) { c.Script(t, "cluster-stop-replica", fmt.Sprint(i)) }

// Start starts replica i again and waits until it answers and reaches
// ZooKeeper.
func (c *CHCluster) Start(t testing.TB, i int) { c.Script(t, "cluster-start-replica", fmt.Sprint(i)) }

// RestartZK SIGKILLs ZooKeeper and starts it again.
func (c *CHCluster) RestartZK(t testing.TB) { c.Script(t, "cluster-zk-restart") }

// KillZK SIGKILLs ZooKeeper and leaves it down: the replicas' sessions
// expire after session_timeout_ms (10 s) and their replicated tables turn
// read-only until StartZK.
func (c *CHCluster) KillZK(t testing.TB) { c.Script(t, "cluster-zk-kill") }

// StartZK starts ZooKeeper (with its data) and waits until it answers.
func (c *CHCluster) StartZK(t testing.TB) { c.Script(t, "cluster-zk-start") }

// Conn opens a connection to replica i alone; t.Cleanup closes it.
func (c *CHCluster) Conn(t testing.TB, i int) driver.Conn {
	t.Helper()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{c.Addrs[i-1]}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("testenv: open replica %d: %v", i, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Exec runs a statement on replica i.
func (c *CHCluster) Exec(t testing.TB, i int, query string) {
	t.Helper()
	if err := clickHouseExec(c.Addrs[i-1], query); err != nil {
		t.Fatalf("testenv: replica %d: %s: %v", i, query, err)
	}
}

// SyncReplica waits (SYSTEM SYNC REPLICA) until replica i has fetched
// every part the replication log names for db.table.
func (c *CHCluster) SyncReplica(t testing.TB, i int, db, table string) {
	t.Helper()
	c.Exec(t, i, "SYSTEM SYNC REPLICA `"+db+"`.`"+table+"`")
}

// Counts returns count() and uniqExact(id) of db.table on replica i.
func (c *CHCluster) Counts(t testing.TB, i int, db, table string) (count, uniq uint64) {
	t.Helper()
	conn := c.Conn(t, i)
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := conn.QueryRow(ctx, "SELECT count(), uniqExact(id) FROM `"+db+"`.`"+table+"`").Scan(&count, &uniq); err != nil {
		t.Fatalf("testenv: count on replica %d: %v", i, err)
	}
	return count, uniq
}

// IDs returns the ids of db.table on replica i, sorted, as stored (no
// FINAL): a duplicate shows as a repeated id.
func (c *CHCluster) IDs(t testing.TB, i int, db, table string) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	var ids []int64
	if err := c.Conn(t, i).QueryRow(ctx, "SELECT groupArray(id) FROM (SELECT id FROM `"+db+"`.`"+table+"` ORDER BY id)").Scan(&ids); err != nil {
		t.Fatalf("testenv: ids on replica %d: %v", i, err)
	}
	return ids
}
