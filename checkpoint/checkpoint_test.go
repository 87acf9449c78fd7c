package checkpoint_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
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
	if err := store.MarkProcessed(ctx, mark, nil); err != nil {
		t.Fatal(err)
	}
	if err := store.MarkProcessed(ctx, mark, nil); err != nil { // re-delivery: no second update
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

func seq(from, n int64) []int64 {
	s := make([]int64, n)
	for i := range s {
		s[i] = from + int64(i)
	}
	return s
}

func TestSplitRuns(t *testing.T) {
	var manyRuns []int64 // ten runs of lengths 20, 21, … 29, two apart
	for i := int64(0); i < 10; i++ {
		manyRuns = append(manyRuns, seq(i*100, 20+i)...)
	}
	var manyRest []int64 // the two shortest runs
	manyRest = append(manyRest, seq(0, 20)...)
	manyRest = append(manyRest, seq(100, 21)...)
	for _, tc := range []struct {
		name         string
		ids          []int64
		lo, hi, rest []int64
	}{
		{"one id", []int64{5}, nil, nil, []int64{5}},
		{"short run stays in the array", seq(1, 15), nil, nil, seq(1, 15)},
		{"one run", seq(1, 16), []int64{1}, []int64{16}, nil},
		{"run and singles, unsorted, duplicated", append([]int64{900, 3, 900, -7}, seq(10, 30)...), []int64{10}, []int64{39}, []int64{-7, 3, 900}},
		{"two runs with a gap of one", append(seq(1, 20), seq(22, 20)...), []int64{1, 22}, []int64{20, 41}, nil},
		{"more runs than maxRuns keeps the longest", manyRuns, []int64{200, 300, 400, 500, 600, 700, 800, 900}, []int64{221, 322, 423, 524, 625, 726, 827, 928}, manyRest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.ids)
			lo, hi, rest := checkpoint.SplitRuns(tc.ids)
			if !slices.Equal(lo, tc.lo) || !slices.Equal(hi, tc.hi) || !slices.Equal(rest, tc.rest) {
				t.Errorf("SplitRuns = %v, %v, %v; want %v, %v, %v", lo, hi, rest, tc.lo, tc.hi, tc.rest)
			}
			if !slices.Equal(in, tc.ids) {
				t.Errorf("SplitRuns modified its argument")
			}
		})
	}
}

// Every shape of batch marks exactly its rows, and on a big outbox the
// statement is planned on the primary key with an estimate near the batch
// size (a bad estimate once made every marking JIT-compiled or scan the
// table).
func TestMarkProcessedExactRowsAndPlan(t *testing.T) {
	ctx := context.Background()
	o := testenv.NewOutbox(t)
	ids := o.MustInsert(60_000, true)
	pool, err := pgxpool.New(ctx, o.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `ANALYZE event_outbox`); err != nil {
		t.Fatal(err)
	}
	store := checkpoint.NewStore(pool, "public.event_outbox")

	var scattered []int64 // every third id: no runs at all
	for i := 0; i < 3000; i += 3 {
		scattered = append(scattered, ids[i])
	}
	var runsAndSingles []int64 // twelve runs of 100 and singles between them
	for i := 3000; i < 6000; i++ {
		if (i%250 < 100) || i%17 == 0 {
			runsAndSingles = append(runsAndSingles, ids[i])
		}
	}
	for _, tc := range []struct {
		name string
		ids  []int64
	}{
		{"scattered", scattered},
		{"runs and singles", runsAndSingles},
		{"one long run", ids[10_000:18_000]},
		{"two runs, reversed", append(slices.Clone(ids[30_000:31_000]), ids[20_000:21_000]...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, args := checkpoint.MarkProcessedQuery(`public.event_outbox`, tc.ids)
			var plan string
			if err := pool.QueryRow(ctx, `EXPLAIN (FORMAT JSON) `+q, args...).Scan(&plan); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(plan, `"Seq Scan"`) || !strings.Contains(plan, `event_outbox_pkey`) {
				t.Errorf("marking %d rows is not planned on the primary key: %s", len(tc.ids), plan)
			}
			var p []struct {
				Plan struct {
					Plans []struct {
						Rows float64 `json:"Plan Rows"`
					}
				}
			}
			if err := json.Unmarshal([]byte(plan), &p); err != nil || len(p) != 1 || len(p[0].Plan.Plans) != 1 {
				t.Fatalf("plan %s: %v", plan, err)
			}
			if est := p[0].Plan.Plans[0].Rows; est > 3*float64(len(tc.ids)) {
				t.Errorf("marking %d rows is estimated at %.0f rows: %s", len(tc.ids), est, plan)
			}

			if _, err := pool.Exec(ctx, `UPDATE event_outbox SET status = 'pending' WHERE status <> 'pending'`); err != nil {
				t.Fatal(err)
			}
			if err := store.MarkProcessed(ctx, tc.ids, nil); err != nil {
				t.Fatal(err)
			}
			var marked, wrong int
			if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'processed'),
			        count(*) FILTER (WHERE (status = 'processed') <> (id = ANY($1)))
			        FROM event_outbox`, tc.ids).Scan(&marked, &wrong); err != nil {
				t.Fatal(err)
			}
			if marked != len(tc.ids) || wrong != 0 {
				t.Errorf("%d rows marked, %d wrong; want exactly the %d given", marked, wrong, len(tc.ids))
			}
		})
	}
}
