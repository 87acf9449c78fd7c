package lease

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

func TestMayStillWrite(t *testing.T) {
	self := Self()
	host, _ := os.Hostname()
	boot := bootID()
	if boot == "" || startTime(os.Getpid()) == "" {
		t.Fatal("this test needs /proc (Linux)")
	}
	parent := os.Getppid()
	cases := []struct {
		name, prev string
		want       bool
	}{
		{"no previous holder", "", false},
		{"this process", self, false},
		{"a live process of this host", fmt.Sprintf("%s/%d/%s/%s", host, parent, startTime(parent), boot), true},
		{"a process of this host that exited", fmt.Sprintf("%s/%d/%s/%s", host, 1<<22+7, "12345", boot), false},
		{"its pid now belongs to a later process", fmt.Sprintf("%s/%d/%s/%s", host, parent, "1", boot), false},
		{"another host", fmt.Sprintf("elsewhere/%d/%s/%s", parent, startTime(parent), boot), true},
		{"this host before a reboot", fmt.Sprintf("%s/%d/%s/%s", host, parent, startTime(parent), "old-boot"), true},
		{"unreadable", "garbage", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := mayStillWrite(c.prev, self); got != c.want {
				t.Errorf("mayStillWrite(%q) = %v, want %v", c.prev, got, c.want)
			}
		})
	}
}

// The fencing sequence: the holder's lock session is killed (a pooler, an
// administrator); it stops writing at once; a successor bumps the term, which
// refuses the old holder's markings, and waits out the old lease before it
// may write.
func TestTakeoverFencesTheOldHolder(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	ttl := 3 * time.Second
	opts := func(holder string) Options {
		return Options{Name: "leader:test", LockKey: "outbox-cdc:test", TTL: ttl, Holder: holder}
	}
	old, err := TryAcquire(ctx, o.PGURL, opts("otherhost/1/1/boot"))
	if err != nil || old == nil {
		t.Fatalf("first holder: %v, %v", old, err)
	}
	defer old.Release(ctx)
	if err := old.Check(); err != nil {
		t.Fatalf("fresh lease: %v", err)
	}
	if l, err := TryAcquire(ctx, o.PGURL, opts("")); l != nil || err != nil {
		t.Fatalf("second TryAcquire while held: %v, %v; want nil, nil", l, err)
	}
	ids := o.MustInsert(3, true)
	store := checkpoint.NewStore(o.PG, "public.event_outbox")
	oldStore := store.Fenced(checkpoint.Term{Lease: old.Name(), Term: old.Term()})
	if err := oldStore.MarkProcessed(ctx, ids[:1], nil); err != nil {
		t.Fatalf("marking under a held lease: %v", err)
	}

	// The pooler kills the lock session.
	if _, err := o.PG.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = (hashtext('outbox-cdc:test')::bigint & 4294967295)::oid`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var waited time.Duration
	successorOpts := opts("")
	successorOpts.Wait = func(_ string, d time.Duration) { waited = d }
	var next *Lease
	for next == nil && time.Since(start) < 10*time.Second {
		if next, err = TryAcquire(ctx, o.PGURL, successorOpts); err != nil {
			t.Fatal(err)
		}
	}
	if next == nil {
		t.Fatal("successor never got the lock")
	}
	defer next.Release(ctx)
	took := time.Since(start)
	if next.Term() != old.Term()+1 {
		t.Errorf("successor term %d, want %d", next.Term(), old.Term()+1)
	}
	if waited < ttl/2 || took < ttl/2 {
		t.Errorf("successor waited %s (returned after %s); want about the old lease's %s", waited, took, ttl)
	}
	// The old holder cannot renew, and by now its own clock has run out.
	if err := old.Renew(ctx); !errors.Is(err, ErrLost) {
		t.Errorf("old holder renewed: %v", err)
	}
	if err := old.Check(); !errors.Is(err, ErrLost) {
		t.Errorf("old holder's Check after takeover: %v, want ErrLost", err)
	}
	if err := oldStore.MarkProcessed(ctx, ids[1:], nil); !errors.Is(err, checkpoint.ErrFenced) {
		t.Errorf("old holder's marking after takeover: %v, want ErrFenced", err)
	}
	if n := o.StatusCounts()["processed"]; n != 1 {
		t.Errorf("%d rows processed, want only the one marked before the takeover", n)
	}
	newStore := store.Fenced(checkpoint.Term{Lease: next.Name(), Term: next.Term()})
	if err := newStore.MarkProcessed(ctx, ids[1:], nil); err != nil {
		t.Errorf("successor's marking: %v", err)
	}

	// A released lease is not waited for.
	next.Release(ctx)
	// The server drops the released session's lock when its backend exits,
	// a moment after the connection closed: retry until the lock is free,
	// and judge the wait by what the lease says it waited.
	thirdOpts := opts("yetanotherhost/1/1/boot")
	waited = 0
	thirdOpts.Wait = func(_ string, d time.Duration) { waited = d }
	var third *Lease
	for start = time.Now(); third == nil && time.Since(start) < 10*time.Second; {
		if third, err = TryAcquire(ctx, o.PGURL, thirdOpts); err != nil {
			t.Fatal(err)
		}
	}
	if third == nil {
		t.Fatal("the lock was never free after a clean release")
	}
	defer third.Release(ctx)
	if waited != 0 {
		t.Errorf("waited %s after a clean release, want no wait", waited)
	}
}
