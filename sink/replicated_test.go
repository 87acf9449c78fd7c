package sink

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// TestReplicaLostBeforeOthersFetched is issue 17's failure on a real
// two-replica cluster, made deterministic: replica 2 does not fetch (SYSTEM
// STOP FETCHES) while a batch goes to replica 1, then replica 1 and the
// writing sink die together. A new sink on replica 2 recovers and sends the
// batch again; replica 1 comes back 5 s later and the replicas meet.
//
// Without a quorum the new sink cannot see the batch on replica 2 and
// stores it a second time: the duplicates the issue measured (the first
// case expects them, which shows the check can fail). With the
// default (auto: 2 of 2) the first INSERT was never acknowledged, the second
// is refused until the first one's quorum is settled, and after that the
// rows are found by consistent reads and not sent again.
func TestReplicaLostBeforeOthersFetched(t *testing.T) {
	for _, tc := range []struct {
		name      string
		quorum    int
		wantCount uint64
	}{
		{"no quorum duplicates (the issue)", 0, 22},
		{"quorum auto", QuorumAuto, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cl := testenv.StartCHCluster(t, "replicaloss", 2)
			db := "cdc"
			if _, err := migrations.ApplyClickHouse(ctx, cl.Conn(t, 1), migrations.ClickHouse{Database: db, Table: "events", Cluster: cl.Name}); err != nil {
				t.Fatalf("migrate: %v", err)
			}
			opts := Options{Addr: cl.Addrs, Database: db, Table: "events", Cluster: cl.Name,
				InsertQuorum: tc.quorum, InsertQuorumTimeout: 30 * time.Second}
			s1, err := Open(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("mode: %s", s1.Mode())
			if tc.quorum == QuorumAuto && s1.Mode().Quorum != 2 {
				t.Fatalf("auto quorum on 2 replicas = %d, want 2", s1.Mode().Quorum)
			}
			cl.Exec(t, 2, "SYSTEM STOP FETCHES "+db+".events_local")

			batch := rowsAt(1000, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
			written := make(chan error, 1)
			go func() { _, err := s1.Write(ctx, batch); written <- err }()
			if tc.quorum == 0 {
				if err := <-written; err != nil {
					t.Fatalf("insert without quorum: %v", err)
				}
			} else {
				// The INSERT is on replica 1 and waits for replica 2.
				waitRows(t, cl, 1, db, 10)
			}
			cl.Kill(t, 1)
			if tc.quorum != 0 {
				if err := <-written; err == nil {
					t.Fatal("a quorum INSERT was acknowledged while its second replica could not fetch it")
				}
			}
			s1.Close()
			cl.Exec(t, 2, "SYSTEM START FETCHES "+db+".events_local")

			// The restarted daemon, on the survivor, from an older confirmed
			// LSN. Its batch holds more rows than the lost one (batches are cut
			// anew after a restart), so ReplicatedMergeTree's deduplication of
			// identical blocks cannot recognise it.
			batch = rowsAt(1000, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
			opts.Addr = cl.Addrs[1:]
			s2, err := Open(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			start := time.Now()
			restarted := false
			var back time.Time
			var res Result
			for attempt := 1; ; attempt++ {
				if !restarted && time.Since(start) > 5*time.Second {
					cl.Start(t, 1) // the killed replica comes back 5 s later
					restarted, back = true, time.Now()
				}
				if err = s2.Recover(ctx, 900); err == nil {
					if res, err = s2.Write(ctx, batch); err == nil {
						break
					}
				}
				if time.Since(start) > 2*time.Minute {
					t.Fatalf("write on the survivor still failing after %d attempts: %v", attempt, err)
				}
				if attempt == 1 {
					t.Logf("survivor refuses the write (retried): %v", firstLine(err))
				}
				time.Sleep(500 * time.Millisecond)
			}
			resumed := "(the killed replica was still down)"
			if restarted {
				resumed = fmt.Sprintf("%s after the killed replica answered again", time.Since(back).Round(100*time.Millisecond))
			}
			t.Logf("survivor wrote %s after it started, %s: inserted %d, skipped %d",
				time.Since(start).Round(100*time.Millisecond), resumed, res.Inserted, res.Skipped)

			if !restarted {
				cl.Start(t, 1)
			}
			for i := 1; i <= 2; i++ {
				cl.SyncReplica(t, i, db, "events_local")
			}
			for i := 1; i <= 2; i++ {
				n, u := cl.Counts(t, i, db, "events_local")
				if u != 12 || n != tc.wantCount {
					t.Errorf("replica %d: count() %d, uniqExact(id) %d; want %d and 12", i, n, u, tc.wantCount)
				}
			}
			if n, _ := cl.Counts(t, 2, db, "events"); n != tc.wantCount {
				t.Errorf("Distributed events: count() %d, want %d", n, tc.wantCount)
			}
		})
	}
}

// waitRows waits until replica i holds n rows.
func waitRows(t *testing.T, cl *testenv.CHCluster, i int, db string, n uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, _ := cl.Counts(t, i, db, "events_local"); c >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %d never held %d rows", i, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func firstLine(err error) string {
	if err == nil {
		return ""
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
