package sink

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// TestRecoveryWaitsForAnOpenQuorum is the race TestClusterZooKeeperRestart
// met, made deterministic on a real two-replica cluster: a quorum INSERT on
// replica 1 times out because replica 2 does not fetch (SYSTEM STOP
// FETCHES), so its quorum stays open. A new sink on replica 2 recovers;
// replica 2 then fetches the part, which closes the quorum, and the new
// sink sends the same rows. A sequentially consistent read leaves out a
// part whose quorum is open instead of failing, so a recovery that read
// while it was open would not know the rows and would store them twice;
// the sink must wait until the quorum is settled, then skip them.
func TestRecoveryWaitsForAnOpenQuorum(t *testing.T) {
	ctx := context.Background()
	cl, db := migratedCluster(t, "openquorum")
	opts := Options{Addr: cl.Addrs[:1], Database: db, Table: "events", Cluster: cl.Name,
		InsertQuorum: QuorumAuto, InsertQuorumTimeout: 2 * time.Second}
	s1, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	cl.Exec(t, 2, "SYSTEM STOP FETCHES "+db+".events_local")
	batch := rowsAt(1000, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	if _, err := s1.Write(ctx, batch); err == nil {
		t.Fatal("a quorum INSERT was acknowledged while its second replica could not fetch it")
	}

	opts.Addr = cl.Addrs[1:]
	s2, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	start, fetching := time.Now(), false
	for {
		if !fetching && time.Since(start) > 2*time.Second {
			cl.Exec(t, 2, "SYSTEM START FETCHES "+db+".events_local")
			fetching = true
		}
		if err = s2.Recover(ctx, 900); err == nil {
			break
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("recovery still failing after a minute: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("recovered after %s (fetches started after 2s)", time.Since(start).Round(100*time.Millisecond))
	if !fetching {
		cl.Exec(t, 2, "SYSTEM START FETCHES "+db+".events_local")
	}
	waitRows(t, cl, 2, db, 10) // the quorum is reached now
	res, err := s2.Write(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		cl.SyncReplica(t, i, db, "events_local")
		if n, u := cl.Counts(t, i, db, "events_local"); n != 10 || u != 10 {
			t.Errorf("replica %d: count() %d, uniqExact(id) %d; want 10 and 10 (inserted %d, skipped %d)", i, n, u, res.Inserted, res.Skipped)
		}
	}
}

// TestQuorumIsSizedOnlyWithZooKeeper: while ZooKeeper is down, ClickHouse
// reports 0 replicas of a replicated table; a sink opened then must fail
// (and be retried) rather than size insert_quorum: auto on that count (1:
// no quorum at all, for the sink's whole life: the cluster torture found
// daemons that started during a ZooKeeper outage writing without one).
func TestQuorumIsSizedOnlyWithZooKeeper(t *testing.T) {
	ctx := context.Background()
	cl, db := migratedCluster(t, "quorumsize")
	opts := Options{Addr: cl.Addrs, Database: db, Table: "events", Cluster: cl.Name, InsertQuorum: QuorumAuto}
	cl.KillZK(t)
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	s, err := Open(openCtx, opts)
	cancel()
	if err == nil {
		s.Close()
		t.Fatalf("a sink opened while ZooKeeper was down, mode %q", s.Mode())
	}
	t.Logf("opened while ZooKeeper was down: %v", err)
	cl.StartZK(t)
	deadline := time.Now().Add(time.Minute)
	for s, err = Open(ctx, opts); err != nil; s, err = Open(ctx, opts) {
		if time.Now().After(deadline) {
			t.Fatalf("no sink a minute after ZooKeeper came back: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	defer s.Close()
	if m := s.Mode(); m.Quorum != 2 || m.Replicas != 2 {
		t.Errorf("mode after ZooKeeper came back: %s, want quorum 2 of 2", m)
	}
}

// migratedCluster starts a private two-replica cluster with database cdc
// migrated on it (events_local and events, ON CLUSTER).
func migratedCluster(t *testing.T, name string) (*testenv.CHCluster, string) {
	t.Helper()
	cl := testenv.StartCHCluster(t, name, 2)
	const db = "cdc"
	if _, err := migrations.ApplyClickHouse(context.Background(), cl.Conn(t, 1), migrations.ClickHouse{Database: db, Table: "events", Cluster: cl.Name}); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return cl, db
}
