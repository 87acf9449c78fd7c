package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// TestClusterReplicaLoss runs the real daemon against a two-replica
// ClickHouse cluster (made by `cdc migrate` with clickhouse.cluster, at the
// default insert_quorum: auto) while producers commit transactions. Each
// round SIGKILLs the daemon and, at the same instant, the replica it is
// connected to; a new daemon starts against the survivor, and the killed
// replica comes back 5 s later. Afterwards every replica, synced, must hold
// every committed row exactly once, without FINAL: its ids are the outbox's.
//
// CDC_CLUSTER_RUNS sets the number of rounds (default 1).
func TestClusterReplicaLoss(t *testing.T) {
	runs := envInt("CDC_CLUSTER_RUNS", 1)
	r := newClusterRig(t, "clusterloss", 2)
	stop := r.produce(2, 50, 50*time.Millisecond)
	d := r.spawn()
	for round := 1; round <= runs; round++ {
		// Under load: wait until this daemon has delivered more rows.
		r.waitDelivered(500, time.Minute)
		victim := connectedReplica(t, d, r.cl.Addrs)
		if victim == 0 {
			r.dump()
			t.Fatalf("round %d: %s has no connection to any replica", round, d.name)
		}
		// Together: cdc first, the replica a moment later (the order a
		// shared power loss or an OOM kill of the host would give).
		d.kill()
		r.cl.Kill(t, victim)
		killed := d.name
		d = r.spawn()
		time.Sleep(5 * time.Second)
		r.cl.Start(t, victim)
		t.Logf("round %d: killed %s and replica %d together; replica back after 5s", round, killed, victim)
	}
	stop()
	committed := r.finish()
	if !logContains(r.procs[0].log, "quorum inserts (2 of 2 replicas)") {
		t.Errorf("the start-up log does not name the quorum mode:\n%s", tail(r.procs[0].log, 20))
	}
	t.Logf("cluster: %d rounds, %d rows committed, %s", runs, committed, time.Since(r.start).Round(time.Second))
}

// TestClusterShards runs the layout docs/scaling.md keeps for several
// shards: a cluster of 2 shards × 2 replicas, one outbox (its own
// PostgreSQL database and slot) and one cdc per shard, each cdc's
// clickhouse.addr the replicas of its shard, both with the same
// clickhouse.cluster. `cdc migrate` (run by each) must make <table>_local on
// all four servers, each in its shard's ZooKeeper path, and the
// Distributed table. Under load on both outboxes, shard 1's cdc and the
// replica it writes to are SIGKILLed together; a new cdc starts against the
// survivor and the replica comes back 5 s later, while shard 2's cdc goes on
// writing. Afterwards, synced, every replica of each shard holds exactly its
// outbox's committed rows (no FINAL), and the Distributed table counts the
// sum on every server.
func TestClusterShards(t *testing.T) {
	cl := testenv.StartCHShards(t, "shards", 2, 2)
	rigs := []*clusterRig{newShardRig(t, cl, 1, "shards1"), newShardRig(t, cl, 2, "shards2")}
	checkShardTables(t, cl, 2)
	var stops []func()
	var ds []*daemonProc
	for _, r := range rigs {
		stops = append(stops, r.produce(2, 50, 50*time.Millisecond))
		ds = append(ds, r.spawn())
	}
	for _, r := range rigs {
		r.waitDelivered(500, time.Minute)
	}
	s1, s2 := rigs[0], rigs[1]
	victim := connectedReplica(t, ds[0], s1.addrs())
	if victim == 0 {
		s1.dump()
		t.Fatalf("%s has no connection to any replica of shard 1", ds[0].name)
	}
	server := s1.servers[victim-1]
	ds[0].kill()
	cl.Kill(t, server)
	killed := ds[0].name
	ds[0] = s1.spawn()
	// Shard 2 does not depend on shard 1's replicas: its cdc goes on.
	other := s2.watch(5 * time.Second)
	cl.Start(t, server)
	s1.waitDelivered(200, 2*time.Minute)
	t.Logf("killed %s and server %d (shard 1) together; server back after 5s; shard 2 delivered %d rows meanwhile", killed, server, other.rows)
	if other.rows == 0 {
		t.Errorf("shard 2's cdc delivered nothing while a replica of shard 1 was down")
	}
	for _, stop := range stops {
		stop()
	}
	var total int64
	var per []string
	for i, r := range rigs {
		n := r.finish()
		total += n
		per = append(per, fmt.Sprintf("shard %d: %d", i+1, n))
	}
	for i := range cl.Addrs {
		if n, _ := cl.Counts(t, i+1, clusterDB, "events"); n != uint64(total) {
			t.Errorf("server %d: the Distributed table counts %d rows, want %d (%s)", i+1, n, total, strings.Join(per, ", "))
		}
	}
	t.Logf("shards: %d rows committed (%s), %s", total, strings.Join(per, ", "), time.Since(s1.start).Round(time.Second))
}

// checkShardTables checks what `cdc migrate` made on a cluster of shards:
// on every server, events_local is a ReplicatedMergeTree in its own shard's
// ZooKeeper path with that shard's replicas, and events is Distributed.
func checkShardTables(t *testing.T, cl *testenv.CHCluster, shards int) {
	t.Helper()
	ctx := context.Background()
	for s := 1; s <= shards; s++ {
		for _, i := range cl.ShardServers(s) {
			var local, dist, zkPath string
			var replicas uint64
			err := cl.Conn(t, i).QueryRow(ctx, `SELECT
				(SELECT engine FROM system.tables WHERE database = ? AND name = 'events_local'),
				(SELECT engine FROM system.tables WHERE database = ? AND name = 'events'),
				(SELECT zookeeper_path FROM system.replicas WHERE database = ? AND table = 'events_local'),
				(SELECT toUInt64(total_replicas) FROM system.replicas WHERE database = ? AND table = 'events_local')`,
				clusterDB, clusterDB, clusterDB, clusterDB).Scan(&local, &dist, &zkPath, &replicas)
			if err != nil {
				t.Fatalf("server %d: read its tables: %v", i, err)
			}
			wantPath := fmt.Sprintf("/clickhouse/tables/%02d/%s/events_local", s, clusterDB)
			if local != "ReplicatedMergeTree" || dist != "Distributed" || zkPath != wantPath || replicas != uint64(cl.Replicas) {
				t.Errorf("server %d (shard %d): events_local %q at %q with %d replicas, events %q; want ReplicatedMergeTree at %q with %d, Distributed",
					i, s, local, zkPath, replicas, dist, wantPath, cl.Replicas)
			}
		}
	}
}

// TestClusterZooKeeperRestart SIGKILLs ZooKeeper under load, once for less
// than the replicas' session timeout (10 s: their sessions survive) and once
// for longer (they expire: the replicated tables turn read-only and the
// replicas re-initialise when ZooKeeper is back), the second time with a
// SIGKILL of cdc in the middle of the outage. Inserts fail while ZooKeeper
// is gone and cdc retries them; afterwards every replica holds every
// committed row exactly once.
func TestClusterZooKeeperRestart(t *testing.T) {
	r := newClusterRig(t, "zkrestart", 2)
	stop := r.produce(2, 50, 50*time.Millisecond)
	d := r.spawn()
	for round, down := range []time.Duration{3 * time.Second, 15 * time.Second} {
		r.waitDelivered(500, time.Minute)
		r.cl.KillZK(t)
		gone := time.Now()
		w := r.watch(down / 2)
		if round == 1 {
			d.kill()
			d = r.spawn()
		}
		w = w.add(r.watch(down - down/2))
		r.cl.StartZK(t)
		back := time.Now()
		r.waitDelivered(200, 3*time.Minute)
		t.Logf("round %d: ZooKeeper down %s; %d rows marked after it died, the last %s after; 200 more delivered %s after it was back; %s's log: %s",
			round+1, back.Sub(gone).Round(100*time.Millisecond), w.rows, sinceOrNever(w.last, gone), time.Since(back).Round(100*time.Millisecond), d.name, problems(d.log, gone))
	}
	stop()
	r.finish()
	failed := 0
	for _, p := range r.procs {
		failed += strings.Count(readLog(p.log), `"op":"clickhouse insert"`)
	}
	if failed == 0 {
		t.Errorf("no daemon logged a failed ClickHouse insert: the ZooKeeper outage was not felt")
	}
	t.Logf("zookeeper: %d failed inserts retried, %s", failed, time.Since(r.start).Round(time.Second))
}

// ---------------------------------------------------------------- the rig

// clusterDB is the ClickHouse database of the cluster tests.
const clusterDB = "cdc"

// clusterRig is what the cluster tests share: the real cdc binary against
// one shard of a private replicated ClickHouse (testenv.StartCHCluster or
// StartCHShards, migrated by `cdc migrate` with clickhouse.cluster) and an
// outbox of its own on the shared PostgreSQL, with producers and daemons
// the test kills and starts, and the final check of every replica of the
// shard.
type clusterRig struct {
	t       *testing.T
	bin     string
	cl      *testenv.CHCluster
	servers []int // the shard's servers in cl (1-based), its cdc's clickhouse.addr
	o       *testenv.Outbox
	env     []string
	logDir  string
	procs   []*daemonProc
	start   time.Time
}

// newClusterRig starts a cluster of one shard with replicas replicas and
// the rig on it.
func newClusterRig(t *testing.T, name string, replicas int, env ...string) *clusterRig {
	t.Helper()
	return newShardRig(t, testenv.StartCHCluster(t, name, replicas), 1, name, env...)
}

// newShardRig sets up a pipeline for shard (1-based) of cl: a PostgreSQL
// database with its outbox and slot, and a cdc configuration whose
// clickhouse.addr lists that shard's replicas only (one cdc per shard: it
// writes to <table>_local there), migrated by `cdc migrate`.
func newShardRig(t *testing.T, cl *testenv.CHCluster, shard int, name string, env ...string) *clusterRig {
	t.Helper()
	r := &clusterRig{t: t, bin: cdcBinary(t), cl: cl, servers: cl.ShardServers(shard), logDir: keptDir(t, name)}
	pgURL := testenv.NewPostgresDB(t)
	slot := pgURL[strings.LastIndex(pgURL, "/")+1:]
	if i := strings.IndexByte(slot, '?'); i >= 0 {
		slot = slot[:i]
	}
	r.env = append([]string{
		"CDC_POSTGRES_URL=" + pgURL,
		"CDC_POSTGRES_SLOT=" + slot,
		"CDC_CLICKHOUSE_ADDR=" + strings.Join(r.addrs(), ","),
		"CDC_CLICKHOUSE_CLUSTER=" + r.cl.Name,
		"CDC_CLICKHOUSE_DATABASE=" + clusterDB,
	}, testenv.FastEnv()...)
	r.env = append(r.env, "CDC_BATCH_FLUSH_INTERVAL=200ms", "CDC_HTTP_LISTEN=127.0.0.1:0")
	r.env = append(r.env, env...)
	migrate(t, r.bin, r.env)
	r.o = testenv.OpenOutbox(t, pgURL, r.addrs()[0], clusterDB)
	r.start = time.Now()
	return r
}

// addrs are the native addresses of the rig's shard.
func (r *clusterRig) addrs() []string {
	var out []string
	for _, s := range r.servers {
		out = append(out, r.cl.Addrs[s-1])
	}
	return out
}

// spawn starts one more `cdc run`.
func (r *clusterRig) spawn() *daemonProc {
	p := startDaemon(r.t, r.bin, r.env, r.logDir, fmt.Sprintf("cdc-%03d", len(r.procs)+1))
	r.procs = append(r.procs, p)
	return p
}

func (r *clusterRig) dump() {
	for _, p := range r.procs {
		r.t.Logf("--- %s\n%s", p.name, tail(p.log, 12))
	}
}

// produce starts producers that commit transactions of 1..rows events
// (one in ten rolled back) with a pause between them; stop ends them.
// The outbox table, not the producers, says what committed.
func (r *clusterRig) produce(producers, rows int, pause time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < producers; i++ {
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := r.o.Insert(context.Background(), 1+rand.IntN(rows), rand.IntN(10) != 0); err != nil {
					r.t.Errorf("producer: %v", err)
					return
				}
				time.Sleep(pause)
			}
		})
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	// Before the pool closes, when the test ends early.
	r.t.Cleanup(stop)
	return stop
}

func (r *clusterRig) processed() int64 { return r.o.StatusCounts()["processed"] }

// progress is what watch saw: rows newly marked processed, and when the
// last of them was seen.
type progress struct {
	rows        int64
	first, last time.Time // zero first: none
}

func (p progress) add(q progress) progress {
	if q.rows > 0 {
		if p.first.IsZero() {
			p.first = q.first
		}
		p.rows, p.last = p.rows+q.rows, q.last
	}
	return p
}

// watch polls the processed count for d: how writes go on (or stop) while
// the test has broken something.
func (r *clusterRig) watch(d time.Duration) progress {
	start := time.Now()
	var p progress
	prev := r.processed()
	for time.Since(start) < d {
		time.Sleep(100 * time.Millisecond)
		if n := r.processed(); n != prev {
			if p.first.IsZero() {
				p.first = time.Now()
			}
			p.rows, p.last, prev = p.rows+n-prev, time.Now(), n
		}
	}
	return p
}

// waitDelivered waits until n more rows are marked processed.
func (r *clusterRig) waitDelivered(n int64, within time.Duration) {
	r.t.Helper()
	before := r.processed()
	deadline := time.Now().Add(within)
	for r.processed() < before+n {
		if time.Now().After(deadline) {
			r.dump()
			r.t.Fatalf("the daemons did not deliver %d more rows within %s (statuses %v)", n, within, r.o.StatusCounts())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// finish waits until every committed row is processed (failing when
// delivery makes no progress for 2 minutes), stops the running daemons
// with SIGTERM, and checks every replica of the shard after SYSTEM SYNC
// REPLICA: its ids, read without FINAL, are exactly the outbox's, each
// once; so are those read through the Distributed table when the cluster
// has this one shard (with several, it holds the other shards' rows too:
// the caller checks it). It returns the committed rows.
func (r *clusterRig) finish() int64 {
	t := r.t
	t.Helper()
	ctx := context.Background()
	rows, err := r.o.PG.Query(ctx, `SELECT id FROM event_outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	want, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	last, progress := int64(-1), time.Now()
	for done := r.processed(); done != int64(len(want)); done = r.processed() {
		if done != last {
			last, progress = done, time.Now()
		}
		if time.Since(progress) > 2*time.Minute {
			r.dump()
			t.Fatalf("not caught up: statuses %v, committed %d", r.o.StatusCounts(), len(want))
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, p := range r.procs {
		if p.running() {
			if code := p.terminate(t, 45*time.Second); code != 0 {
				t.Errorf("%s exited %d after SIGTERM\n%s", p.name, code, tail(p.log, 20))
			}
		} else if p.err != nil && !p.killed {
			t.Errorf("%s exited on its own: %v\n%s", p.name, p.err, tail(p.log, 20))
		}
	}
	r.checkModes()
	for _, s := range r.servers {
		r.cl.SyncReplica(t, s, clusterDB, "events_local")
	}
	for _, s := range r.servers {
		checkIDs(t, fmt.Sprintf("replica %d", s), r.cl.IDs(t, s, clusterDB, "events_local"), want)
	}
	if len(r.servers) == len(r.cl.Addrs) {
		checkIDs(t, "the Distributed table", r.o.CHIDs(), want)
	}
	if t.Failed() {
		r.dump()
	}
	return int64(len(want))
}

// checkModes checks that every daemon that opened its sink logged the
// default mode, a majority quorum of all replicas, whatever was down when it
// started (a daemon started during a ZooKeeper outage once sized its quorum
// on 0 replicas: none).
func (r *clusterRig) checkModes() {
	n := len(r.servers)
	want := fmt.Sprintf("quorum inserts (%d of %d replicas)", n/2+1, n)
	for _, p := range r.procs {
		for _, line := range strings.Split(readLog(p.log), "\n") {
			if strings.Contains(line, `"mode":`) && !strings.Contains(line, want) {
				r.t.Errorf("%s runs in another mode than %q: %s", p.name, want, line)
			}
		}
	}
}

// checkIDs compares sorted stored ids with the outbox's, naming duplicates
// and missing rows.
func checkIDs(t *testing.T, where string, got, want []int64) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	var dups []int64
	for i := 1; i < len(got); i++ {
		if got[i] == got[i-1] && (len(dups) == 0 || dups[len(dups)-1] != got[i]) {
			dups = append(dups, got[i])
		}
	}
	uniq := slices.Compact(slices.Clone(got))
	missing := 0
	for _, id := range want {
		if _, ok := slices.BinarySearch(uniq, id); !ok {
			missing++
		}
	}
	t.Errorf("%s: %d rows (%d ids) for %d committed: %d ids duplicated (e.g. %v), %d missing, %d not in the outbox",
		where, len(got), len(uniq), len(want), len(dups), dups[:min(5, len(dups))], missing, len(uniq)+missing-len(want))
}

func readLog(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

var ssPeer = regexp.MustCompile(`127\.0\.0\.1:(\d+)\s+users:.*pid=(\d+),`)

// connectedReplica returns the replica (1-based) the daemon holds a
// connection to, from `ss`; the one with most connections when several.
// 0: none.
func connectedReplica(t *testing.T, d *daemonProc, addrs []string) int {
	t.Helper()
	out, err := exec.Command("ss", "-tnpH", "state", "established").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	pid := strconv.Itoa(d.cmd.Process.Pid)
	conns := make([]int, len(addrs))
	for _, line := range strings.Split(string(out), "\n") {
		m := ssPeer.FindStringSubmatch(line)
		if m == nil || m[2] != pid {
			continue
		}
		for i, a := range addrs {
			if strings.HasSuffix(a, ":"+m[1]) {
				conns[i]++
			}
		}
	}
	best := 0
	for i, c := range conns {
		if c > 0 && (best == 0 || c > conns[best-1]) {
			best = i + 1
		}
	}
	return best
}

// TestClusterAvailability measures what insert_quorum: auto costs when a
// replica is lost: the replica cdc writes to is SIGKILLed for 15 s (cdc
// itself keeps running) and comes back. With 2 replicas (quorum 2 of 2)
// writes stop until it is back: the INSERT on the survivor waits for its
// quorum (insert_quorum_timeout), then fails and is retried; with 3
// (quorum 2 of 3) they go on through the survivors. Either way every replica ends with every row once. The
// numbers it logs are those of docs/scaling.md's availability section.
func TestClusterAvailability(t *testing.T) {
	for _, tc := range []struct {
		replicas      int
		quorumTimeout string // clickhouse.insert_quorum_timeout; "": the default (1m)
		writesRun     bool   // through the outage
	}{{2, "", false}, {2, "3s", false}, {3, "", true}} {
		t.Run(fmt.Sprintf("%d replicas quorum timeout %s", tc.replicas, cmp.Or(tc.quorumTimeout, "default")), func(t *testing.T) {
			var env []string
			if tc.quorumTimeout != "" {
				env = append(env, "CDC_CLICKHOUSE_INSERT_QUORUM_TIMEOUT="+tc.quorumTimeout)
			}
			r := newClusterRig(t, fmt.Sprintf("avail%d", tc.replicas), tc.replicas, env...)
			stop := r.produce(2, 50, 50*time.Millisecond)
			d := r.spawn()
			r.waitDelivered(500, time.Minute)
			victim := connectedReplica(t, d, r.cl.Addrs)
			if victim == 0 {
				r.dump()
				t.Fatalf("%s has no connection to any replica", d.name)
			}
			r.cl.Kill(t, victim)
			killed := time.Now()
			early := r.watch(5 * time.Second)
			late := r.watch(10 * time.Second)
			r.cl.Start(t, victim)
			back := time.Now()
			r.waitDelivered(200, 3*time.Minute)
			resumed := time.Since(back)
			stop()
			r.finish()
			w := early.add(late)
			t.Logf("%d replicas, quorum auto: replica %d (written to) down %s; %d rows delivered while down (%d after the first 5 s), the first %s and the last %s after the kill; "+
				"200 more delivered %s after it was back; daemon log: %s",
				tc.replicas, victim, back.Sub(killed).Round(100*time.Millisecond), w.rows, late.rows, sinceOrNever(w.first, killed), sinceOrNever(w.last, killed),
				resumed.Round(100*time.Millisecond), problems(d.log, killed))
			if log := problems(d.log, killed); tc.writesRun && late.rows == 0 {
				if strings.Contains(log, "is still open") {
					// The replica died with a quorum insert of ours open:
					// every later insert waits until it is back
					// (docs/scaling.md, "An insert whose replica died
					// mid-quorum"); which case a run meets depends on the
					// kill's timing.
					t.Logf("the killed replica had a quorum insert open: writes waited for it to return, as documented")
				} else {
					t.Errorf("no row delivered from 5 s to 15 s after the loss of 1 of %d replicas, and no quorum insert was left open", tc.replicas)
				}
			}
			if !tc.writesRun && late.rows != 0 {
				t.Errorf("%d rows delivered from 5 s to 15 s after the loss of 1 of %d replicas: a quorum of %d cannot be met", late.rows, tc.replicas, tc.replicas)
			}
		})
	}
}

func sinceOrNever(t, since time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Sub(since).Round(100 * time.Millisecond).String()
}

// problems summarises the warnings and errors the daemon logged after
// since: how many, and each distinct one (error cut at 160 bytes) with the
// time of its first occurrence after since.
func problems(logPath string, since time.Time) string {
	n := 0
	var distinct []string
	seen := map[string]bool{}
	for _, line := range strings.Split(readLog(logPath), "\n") {
		var e struct {
			Time  time.Time `json:"time"`
			Level string    `json:"level"`
			Msg   string    `json:"msg"`
			Err   string    `json:"err"`
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Time.Before(since) || (e.Level != "WARN" && e.Level != "ERROR") {
			continue
		}
		n++
		key := e.Msg + ": " + e.Err[:min(len(e.Err), 160)]
		if !seen[key] {
			seen[key] = true
			distinct = append(distinct, fmt.Sprintf("+%s %s", e.Time.Sub(since).Round(100*time.Millisecond), key))
		}
	}
	return fmt.Sprintf("%d warnings/errors; distinct: %s", n, strings.Join(distinct, " | "))
}
