package main

import (
	"context"
	"fmt"
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
// every committed row exactly once: count() == uniqExact(id) == committed.
//
// CDC_CLUSTER_RUNS sets the number of rounds (default 1).
func TestClusterReplicaLoss(t *testing.T) {
	runs := envInt("CDC_CLUSTER_RUNS", 1)
	bin := cdcBinary(t)
	cl := testenv.StartCHCluster(t, "clusterloss", 2)
	pgURL := testenv.NewPostgresDB(t)
	slot := pgURL[strings.LastIndex(pgURL, "/")+1:]
	if i := strings.IndexByte(slot, '?'); i >= 0 {
		slot = slot[:i]
	}
	const db = "cdc"
	env := append([]string{
		"CDC_POSTGRES_URL=" + pgURL,
		"CDC_POSTGRES_SLOT=" + slot,
		"CDC_CLICKHOUSE_ADDR=" + strings.Join(cl.Addrs, ","),
		"CDC_CLICKHOUSE_CLUSTER=" + cl.Name,
		"CDC_CLICKHOUSE_DATABASE=" + db,
	}, testenv.FastEnv()...)
	env = append(env, "CDC_BATCH_FLUSH_INTERVAL=200ms", "CDC_HTTP_LISTEN=127.0.0.1:0")
	migrate(t, bin, env)
	o := testenv.OpenOutbox(t, pgURL, cl.Addrs[0], db)
	ctx := context.Background()

	prodCtx, stopProducers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Go(func() {
			for prodCtx.Err() == nil {
				if _, err := o.Insert(ctx, 50, true); err != nil {
					t.Errorf("producer: %v", err)
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}

	logDir := t.TempDir()
	n := 0
	spawn := func() *daemonProc {
		n++
		return startDaemon(t, bin, env, logDir, fmt.Sprintf("cdc-%02d", n))
	}
	d := spawn()
	var procs []*daemonProc
	procs = append(procs, d)
	dump := func() {
		for _, p := range procs {
			t.Logf("--- %s\n%s", p.name, tail(p.log, 12))
		}
	}
	start := time.Now()
	for round := 1; round <= runs; round++ {
		// Under load: wait until this daemon has delivered more rows.
		before := o.StatusCounts()["processed"]
		waitUntil(t, "the daemon delivers rows", time.Minute, func() bool {
			return o.StatusCounts()["processed"] > before+500
		})
		victim := connectedReplica(t, d, cl.Addrs)
		if victim == 0 {
			dump()
			t.Fatalf("round %d: %s has no connection to any replica", round, d.name)
		}
		// Together: cdc first, the replica a moment later (the order a
		// shared power loss or an OOM kill of the host would give).
		d.kill()
		cl.Kill(t, victim)
		d = spawn()
		procs = append(procs, d)
		time.Sleep(5 * time.Second)
		cl.Start(t, victim)
		t.Logf("round %d: killed %s and replica %d together; replica back after 5s", round, procs[len(procs)-2].name, victim)
	}
	stopProducers()
	wg.Wait()

	var committed int64
	if err := o.PG.QueryRow(ctx, `SELECT count(*) FROM event_outbox`).Scan(&committed); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for o.StatusCounts()["processed"] != committed {
		if time.Now().After(deadline) {
			dump()
			t.Fatalf("not caught up: statuses %v, committed %d", o.StatusCounts(), committed)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code := d.terminate(t, 45*time.Second); code != 0 {
		t.Errorf("%s exited %d after SIGTERM\n%s", d.name, code, tail(d.log, 20))
	}
	for i := range cl.Addrs {
		cl.SyncReplica(t, i+1, db, "events_local")
	}
	for i := range cl.Addrs {
		count, uniq := cl.Counts(t, i+1, db, "events_local")
		if count != uniq || count != uint64(committed) {
			t.Errorf("replica %d: count() %d, uniqExact(id) %d, committed rows %d", i+1, count, uniq, committed)
		}
	}
	rows, err := o.PG.Query(ctx, `SELECT id FROM event_outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	want, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	got := o.CHIDs() // through the Distributed table
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("ids through the Distributed table differ from the outbox: %d vs %d rows", len(got), len(want))
	}
	if !logContains(procs[0].log, "quorum inserts (2 of 2 replicas)") {
		t.Errorf("the start-up log does not name the quorum mode:\n%s", tail(procs[0].log, 20))
	}
	if t.Failed() {
		dump()
	}
	t.Logf("cluster: %d rounds, %d rows committed, %s", runs, committed, time.Since(start).Round(time.Second))
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
