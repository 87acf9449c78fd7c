package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/replication"
)

// postgres.failover_slot against the server under test (any major): auto
// makes a failover slot on 17+ and a plain one before; an existing plain
// slot is upgraded in place on 17+ (no re-creation, no second backfill);
// true on a server before 17 stops `cdc run` with an error naming the key.
func TestFailoverSlotSetting(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	o := testenv.NewOutbox(t)
	srv, err := replication.ReadServer(ctx, o.PG)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server: PostgreSQL %s", srv.Version)
	supported := srv.VersionNum >= replication.PG17
	failover := func() bool {
		t.Helper()
		is, err := replication.SlotFailover(ctx, o.PG, srv, o.Slot)
		if err != nil {
			t.Fatal(err)
		}
		return is
	}

	// 1. false: a plain slot, even where failover slots exist.
	cfg := o.Config()
	cfg.Postgres.FailoverSlot = "false"
	o.MustInsert(20, true) // predates the slot: delivered by the backfill
	r := start(t, cfg)
	r.waitStreaming(t)
	o.MustInsert(30, true)
	o.WaitCH(50, 30*time.Second)
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if failover() {
		t.Fatal("postgres.failover_slot=false made a failover slot")
	}
	// 2. auto on the existing slot: upgraded on 17+, untouched before; the
	// same slot streams on (nothing backfilled, nothing sent twice).
	cfg = o.Config()
	r = start(t, cfg)
	r.waitStreaming(t)
	o.MustInsert(40, true)
	o.WaitCH(90, 30*time.Second)
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if got := failover(); got != supported {
		t.Fatalf("after a term with failover_slot=auto the slot's failover = %v, want %v (PostgreSQL %s)", got, supported, srv.Version)
	}
	if got := testutil.ToFloat64(r.m.Backfilled); got != 0 {
		t.Fatalf("the upgraded slot was backfilled again: %v rows", got)
	}
	if got := testutil.ToFloat64(r.m.RowsReceived); got != 40 {
		t.Fatalf("the second term received %v rows, want only the 40 new ones", got)
	}
	ids, err := o.PG.Query(ctx, `SELECT id FROM event_outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var all []int64
	for ids.Next() {
		var id int64
		if err := ids.Scan(&id); err != nil {
			t.Fatal(err)
		}
		all = append(all, id)
	}
	if len(all) != 90 {
		t.Fatalf("outbox has %d rows, want 90", len(all))
	}
	o.AssertExactlyOnce(all, nil)

	// 3. true: fine on 17+, a permanent start-up error before.
	cfg = o.Config()
	cfg.Postgres.FailoverSlot = "true"
	r = start(t, cfg)
	if supported {
		r.waitStreaming(t)
		if err := r.shutdown(t); err != nil {
			t.Fatal(err)
		}
		return
	}
	select {
	case err := <-r.done:
		r.done <- err
		if !errors.Is(err, replication.ErrFailoverUnsupported) || !strings.Contains(err.Error(), "postgres.failover_slot") {
			t.Fatalf("Run = %v, want ErrFailoverUnsupported naming postgres.failover_slot", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("failover_slot=true on a server before 17: cdc did not stop within 30s")
	}
}

// A new slot made with failover_slot=auto is a failover slot on 17+.
func TestFailoverSlotCreated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := testenv.NewOutbox(t)
	srv, err := replication.ReadServer(ctx, o.PG)
	if err != nil {
		t.Fatal(err)
	}
	pre := o.MustInsert(10, true)
	r := start(t, o.Config())
	r.waitStreaming(t)
	post := o.MustInsert(10, true)
	o.WaitCH(20, 30*time.Second)
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	o.AssertExactlyOnce(append(pre, post...), nil)
	is, err := replication.SlotFailover(ctx, o.PG, srv, o.Slot)
	if err != nil {
		t.Fatal(err)
	}
	if want := srv.VersionNum >= replication.PG17; is != want {
		t.Fatalf("slot created by cdc (failover_slot=auto) on PostgreSQL %s: failover = %v, want %v", srv.Version, is, want)
	}
}

// With a synchronous standby named and nothing holding logical decoding
// back for it, the leader warns when its term starts. A private server:
// synchronous_standby_names is server-wide (its commits do not wait for the
// standby, which does not exist: the test servers run synchronous_commit = off).
func TestStartWarnsWhenConsumerCanPassTheStandby(t *testing.T) {
	s := testenv.StartPrivate(t, "daemon-guard")
	o := s.Outbox(t)
	s.SetSynchronousStandbyNames(t, "standby1")
	r, logs := startLogged(t, o.Config())
	r.waitStreaming(t)
	if logs.count("consumer can get ahead of the synchronous standby: ") == 0 || logs.count("standby1") == 0 {
		t.Fatalf("no standby-guard warning at the start of the term; log:\n%s", logs)
	}
}
