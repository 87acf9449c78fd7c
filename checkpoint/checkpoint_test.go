package checkpoint_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// Marking rows processed is the daemon's per-row write to PostgreSQL, and its
// WAL is decoded by the walsender too: it must stay a HOT update (no index on
// the columns it sets, room in the page from the migrated fillfactor). An
// index on status, or a marking that touches an indexed column, fails this.
func TestMarkProcessedIsHOT(t *testing.T) {
	ctx := context.Background()
	o := testenv.NewOutbox(t)
	ids := o.MustInsert(2000, true)
	// Runs of consecutive ids with gaps, in reverse order.
	var mark []int64
	for i, id := range ids {
		if i%100 < 60 || i%7 == 0 {
			mark = append(mark, id)
		}
	}
	slices.Reverse(mark)

	cfg, err := pgxpool.ParseConfig(o.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // the session that updates is the one asked to flush its stats
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := checkpoint.NewStore(pool, "public.event_outbox")
	if err := store.MarkProcessed(ctx, mark); err != nil {
		t.Fatal(err)
	}
	if err := store.MarkProcessed(ctx, mark); err != nil { // re-delivery: no second update
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
		t.Fatal(err)
	}
	var upd, hot int64
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := pool.QueryRow(ctx, `SELECT pg_stat_clear_snapshot(), n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'public.event_outbox'::regclass`).Scan(nil, &upd, &hot); err != nil {
			t.Fatal(err)
		}
		if upd >= int64(len(mark)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if upd != int64(len(mark)) {
		t.Fatalf("%d rows updated, want %d (each marked row exactly once)", upd, len(mark))
	}
	// A page can hold its rows' new versions only with fillfactor 50; a few
	// misses at page boundaries are tolerated, an index on status makes it 0.
	if hot < upd*95/100 {
		t.Fatalf("%d of %d updates were HOT, want at least 95%%", hot, upd)
	}

	counts := o.StatusCounts()
	if counts["processed"] != int64(len(mark)) || counts["pending"] != int64(len(ids)-len(mark)) {
		t.Fatalf("status counts %v, want %d processed and %d pending", counts, len(mark), len(ids)-len(mark))
	}
	var wrong int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE (status = 'processed') <> (id = ANY($1))`, mark).Scan(&wrong); err != nil || wrong != 0 {
		t.Fatalf("%d rows with the wrong status (%v)", wrong, err)
	}
}
