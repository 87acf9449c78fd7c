package checkpoint_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/lease"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// A Marking's rows are seen processed only once it commits (the stream
// commits it after the rows' INSERT): before that, and after a rollback,
// they are pending to everyone else. A Marking of a holder whose lease was
// taken over is refused and marks nothing.
func TestMarkingIsSeenOnlyOnCommit(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids := o.MustInsert(30, true)
	store := checkpoint.NewStore(o.PG, "public.event_outbox")
	processed := func() int64 { return o.StatusCounts()["processed"] }
	// begin opens a Marking of s and marks ids in it.
	begin := func(s *checkpoint.Store, ids []int64) (*checkpoint.Marking, error) {
		t.Helper()
		m, err := s.BeginMarking(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Rollback(context.Background()) })
		return m, m.MarkProcessed(ctx, ids, nil)
	}

	m, err := store.BeginMarking(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.MarkProcessed(ctx, ids[:10], nil); err != nil {
		t.Fatal(err)
	}
	if err := m.MarkProcessed(ctx, ids[10:20], nil); err != nil {
		t.Fatal(err)
	}
	if n := processed(); n != 0 {
		t.Fatalf("%d rows seen processed before the marking commits, want 0", n)
	}
	if err := m.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Rollback(ctx); err != nil {
		t.Errorf("rollback after commit: %v, want nothing", err)
	}
	if n := processed(); n != 20 {
		t.Fatalf("%d rows processed after the commit, want 20", n)
	}

	m, err = store.BeginMarking(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.MarkProcessed(ctx, ids[20:25], nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := processed(); n != 20 {
		t.Fatalf("%d rows processed after a rollback, want 20", n)
	}

	old, err := lease.TryAcquire(ctx, o.PGURL, lease.Options{Name: "leader:marking", LockKey: "outbox-cdc:marking", TTL: time.Minute})
	if err != nil || old == nil {
		t.Fatalf("lease: %v, %v", old, err)
	}
	fenced := store.Fenced(checkpoint.Term{Lease: old.Name(), Term: old.Term()})
	m, err = begin(fenced, ids[20:22])
	if err != nil {
		t.Fatal(err)
	}
	// A successor takes the lease over (its term goes up) while the
	// marking is open: the next statement is refused.
	if _, err := o.PG.Exec(ctx, `UPDATE cdc_lease SET term = term + 1 WHERE name = $1`, old.Name()); err != nil {
		t.Fatal(err)
	}
	if err := m.MarkProcessed(ctx, ids[22:25], nil); !errors.Is(err, checkpoint.ErrFenced) {
		t.Fatalf("marking after a takeover: %v, want ErrFenced", err)
	}
	if err := m.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := processed(); n != 20 {
		t.Errorf("%d rows processed after the fenced marking, want 20", n)
	}

	// The takeover comes after the last statement, before the commit: the
	// commit is refused.
	current := store.Fenced(checkpoint.Term{Lease: old.Name(), Term: old.Term() + 1})
	if m, err = begin(current, ids[20:25]); err != nil {
		t.Fatal(err)
	}
	if _, err := o.PG.Exec(ctx, `UPDATE cdc_lease SET term = term + 1 WHERE name = $1`, old.Name()); err != nil {
		t.Fatal(err)
	}
	if err := m.Commit(ctx); !errors.Is(err, checkpoint.ErrFenced) {
		t.Fatalf("commit after a takeover: %v, want ErrFenced", err)
	}
	if n := processed(); n != 20 {
		t.Errorf("%d rows processed after the refused commit, want 20", n)
	}
	old.Release(context.Background())
}
