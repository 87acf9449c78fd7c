package verify

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-cdc/outbox-cdc/backfill"
	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

func TestClassify(t *testing.T) {
	const a, b, c = 11, 22, 33
	cases := []struct {
		name   string
		pg     pgState
		pgFP   uint64
		copies []uint64
		want   verdict
	}{
		{"processed and stored once", processed, 0, []uint64{a}, verdict{}},
		{"processed, stored before fingerprints", processed, 0, []uint64{0}, verdict{}},
		{"processed and lost", processed, 0, nil, verdict{missing: true}},
		{"pending, not stored yet", inFlight, 0, nil, verdict{}},
		{"pending and already stored (in flight)", inFlight, 0, []uint64{a}, verdict{}},
		{"never existed", absent, 0, nil, verdict{}},
		{"stored twice", processed, 0, []uint64{a, a}, verdict{duplicated: true}},
		{"stored twice, once before fingerprints", processed, 0, []uint64{a, 0}, verdict{duplicated: true}},
		{"in flight and stored twice", inFlight, 0, []uint64{a, a}, verdict{duplicated: true}},
		{"gone from the outbox", absent, 0, []uint64{a}, verdict{notInOutbox: true}},
		{"gone from the outbox, stored twice", absent, 0, []uint64{a, a}, verdict{duplicated: true, notInOutbox: true}},
		{"reused id: old and new row stored", processed, b, []uint64{a, b}, verdict{notInOutbox: true}},
		{"reused id: new row lost, old one stored", processed, c, []uint64{a, b}, verdict{missing: true, notInOutbox: true}},
		{"reused id: new row stored twice", processed, b, []uint64{a, b, b}, verdict{duplicated: true, notInOutbox: true}},
		{"reused id: old row stored twice", processed, b, []uint64{a, a, b}, verdict{duplicated: true, notInOutbox: true}},
		{"reused id: a copy without fingerprint is the outbox row", processed, c, []uint64{a, b, 0}, verdict{notInOutbox: true}},
		{"reused id, pending new row", inFlight, c, []uint64{a, b}, verdict{notInOutbox: true}},
		{"reused id, both gone", absent, 0, []uint64{a, b}, verdict{notInOutbox: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(tc.pg, tc.pgFP, tc.copies); got != tc.want {
				t.Errorf("classify(%v, %d, %v) = %+v, want %+v", tc.pg, tc.pgFP, tc.copies, got, tc.want)
			}
		})
	}
}

// The digest is only as good as both databases computing the same hash.
func TestRowHashIsTheSameInBothDatabases(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	ids := []int64{0, 1, 2, 3, 4095, 4096, 1 << 20, 123456789, modulus - 1, modulus, modulus + 1, 1 << 40, math.MaxInt64, -1, -4097, math.MinInt64 + 1}
	for i := int64(0); i < 50; i++ {
		ids = append(ids, i*i*i*7919+i)
	}
	for _, id := range ids {
		want := rowHash(id)
		var pg int64
		if err := o.PG.QueryRow(ctx, `SELECT `+strings.ReplaceAll(pgHash, "id", "$1::int8"), id).Scan(&pg); err != nil {
			t.Fatal(err)
		}
		var ch int64
		if err := o.CH.QueryRow(ctx, `SELECT `+chHash+` FROM (SELECT toInt64(`+fmt.Sprint(id)+`) AS id)`).Scan(&ch); err != nil {
			t.Fatal(err)
		}
		if pg != want || ch != want {
			t.Errorf("hash(%d): Go %d, PostgreSQL %d, ClickHouse %d", id, want, pg, ch)
		}
	}
}

// fixture is an outbox whose rows are delivered through the sink, as the
// daemon delivers them, and then damaged.
type fixture struct {
	t    *testing.T
	o    *testenv.Outbox
	pool *pgxpool.Pool
	sink *sink.ClickHouse
}

func newFixture(t *testing.T) *fixture {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(o.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["DateStyle"] = "ISO"
	cfg.ConnConfig.RuntimeParams["TimeZone"] = "UTC"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s, err := sink.Open(ctx, sink.Options{Addr: []string{o.CHAddr}, Database: o.CHDB, Table: "events"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &fixture{t: t, o: o, pool: pool, sink: s}
}

// insert adds n pending rows and returns their ids.
func (f *fixture) insert(n int) []int64 {
	f.t.Helper()
	var ids []int64
	for n > 0 {
		k := min(n, 5000)
		ids = append(ids, f.o.MustInsert(k, true)...)
		n -= k
	}
	return ids
}

// deliver stores ids in ClickHouse (each Write call stores them again) and,
// when mark, marks them processed.
func (f *fixture) deliver(ids []int64, mark bool) {
	f.t.Helper()
	ctx := context.Background()
	var batch []sink.Row
	flush := func() {
		if _, err := f.sink.Write(ctx, batch); err != nil {
			f.t.Fatal(err)
		}
		batch = batch[:0]
	}
	_, err := backfill.Rows(ctx, f.pool, "public.event_outbox", ids, 5000,
		func(_ *decoder.Relation, id int64, _ []any) sink.Position { return sink.Position{Seq: uint64(id)} },
		func(r sink.Row) error {
			if batch = append(batch, r); len(batch) == 5000 {
				flush()
			}
			return nil
		})
	if err != nil {
		f.t.Fatal(err)
	}
	if len(batch) > 0 {
		flush()
	}
	if mark {
		f.exec(`UPDATE event_outbox SET status = 'processed' WHERE id = ANY($1)`, ids)
	}
}

func (f *fixture) exec(q string, args ...any) {
	f.t.Helper()
	if _, err := f.pool.Exec(context.Background(), q, args...); err != nil {
		f.t.Fatalf("%s: %v", q, err)
	}
}

func (f *fixture) chExec(q string) {
	f.t.Helper()
	if err := f.o.CH.Exec(context.Background(), q); err != nil {
		f.t.Fatalf("%s: %v", q, err)
	}
}

// chDelete deletes ids from ClickHouse and waits for the mutation.
func (f *fixture) chDelete(ids []int64) {
	f.t.Helper()
	f.chExec(fmt.Sprintf("ALTER TABLE `%s`.events DELETE WHERE id IN (%s)", f.o.CHDB, joinIDs(ids)))
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n uint64
		if err := f.o.CH.QueryRow(context.Background(),
			fmt.Sprintf("SELECT count() FROM `%s`.events WHERE id IN (%s)", f.o.CHDB, joinIDs(ids))).Scan(&n); err != nil {
			f.t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("ALTER TABLE DELETE still leaves %d rows", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (f *fixture) verify(opts Options) *Report {
	f.t.Helper()
	opts.Table, opts.Database, opts.ClickHouseTable = "public.event_outbox", f.o.CHDB, "events"
	if opts.FromID == 0 && opts.ToID == 0 {
		opts.FromID, opts.ToID = math.MinInt64, math.MaxInt64
	}
	r, err := Run(context.Background(), f.pool, f.o.CH, opts)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

func joinIDs(ids []int64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	return strings.Join(s, ",")
}

func pick(ids []int64, idx ...int) []int64 {
	out := make([]int64, len(idx))
	for i, k := range idx {
		out[i] = ids[k]
	}
	return out
}

func sorted(ids ...[]int64) []int64 {
	var out []int64
	for _, s := range ids {
		out = append(out, s...)
	}
	slices.Sort(out)
	return out
}

// Every kind of difference, found exactly, whatever the bucket, chunk and
// window sizes; in-flight rows are never missing.
func TestVerifyFindsEveryDifference(t *testing.T) {
	f := newFixture(t)
	ids := f.insert(20000)
	f.deliver(ids, true)
	clean := f.verify(Options{})
	if !clean.Clean() || clean.NotInOutbox.Count != 0 || clean.Rows != 20000 || clean.ClickHouseRows != 20000 {
		t.Fatalf("intact outbox: %+v", clean)
	}
	if clean.BucketsDiffering != 0 {
		t.Errorf("intact outbox: %d buckets compared id by id, want 0", clean.BucketsDiffering)
	}

	lost := pick(ids, 0, 1, 2, 500, 4095, 4096, 9999, 19999)
	f.chDelete(lost)
	doubled := pick(ids, 3, 700, 12000)
	f.deliver(doubled, false)
	// Rows ClickHouse has but the outbox lost (retention).
	gone := pick(ids, 15000, 15001)
	f.exec(`DELETE FROM event_outbox WHERE id = ANY($1)`, gone)
	// In flight: pending rows not (or already) in ClickHouse.
	pending := f.insert(300)
	f.deliver(pending[:100], false)
	// A failed row, never stored.
	failed := f.insert(1)
	f.exec(`UPDATE event_outbox SET status = 'failed', attempts = 1 WHERE id = $1`, failed[0])
	// A lost row of a processed chunk offset by a duplicate in its bucket:
	// the same count, only the hash sums tell.
	offset := pick(ids, 8000)
	f.chDelete(offset)
	f.deliver(pick(ids, 8001), false)

	wantMissing := sorted(lost, offset)
	wantDup := sorted(doubled, pick(ids, 8001))
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"defaults", Options{}},
		{"small buckets, chunks and windows", Options{BucketWidth: 16, ChunkBuckets: 3, WindowChunks: 2, GroupBuckets: 2}},
		{"one id per bucket", Options{BucketWidth: 1, ChunkBuckets: 1000, WindowChunks: 7, GroupBuckets: 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var found []int64
			tc.opts.Missing = func(_ context.Context, ids []int64) error { found = append(found, ids...); return nil }
			r := f.verify(tc.opts)
			if !slices.Equal(r.Missing.Sample, wantMissing) || r.Missing.Count != int64(len(wantMissing)) {
				t.Errorf("missing = %+v, want %v", r.Missing, wantMissing)
			}
			if !slices.Equal(found, wantMissing) {
				t.Errorf("Missing callback got %v, want %v", found, wantMissing)
			}
			if !slices.Equal(r.Duplicated.Sample, wantDup) || r.Duplicated.Count != int64(len(wantDup)) {
				t.Errorf("duplicated = %+v, want %v", r.Duplicated, wantDup)
			}
			if !slices.Equal(r.NotInOutbox.Sample, gone) {
				t.Errorf("not_in_outbox = %+v, want %v", r.NotInOutbox, gone)
			}
			if r.Rows != 20000-2 {
				t.Errorf("rows compared = %d, want %d", r.Rows, 20000-2)
			}
			if r.Clean() {
				t.Error("report is clean")
			}
		})
	}

	t.Run("range", func(t *testing.T) {
		r := f.verify(Options{FromID: ids[4000], ToID: ids[9999]})
		want := pick(ids, 4095, 4096, 8000, 9999)
		if !slices.Equal(r.Missing.Sample, want) {
			t.Errorf("missing in %d..%d = %v, want %v", ids[4000], ids[9999], r.Missing.Sample, want)
		}
		if !slices.Equal(r.Duplicated.Sample, pick(ids, 8001)) || r.NotInOutbox.Count != 0 {
			t.Errorf("duplicated %v, not_in_outbox %v", r.Duplicated, r.NotInOutbox)
		}
		if r.Rows != 6000 {
			t.Errorf("rows compared = %d, want 6000", r.Rows)
		}
	})

	t.Run("samples", func(t *testing.T) {
		r := f.verify(Options{Samples: 3})
		if r.Missing.Count != int64(len(wantMissing)) || !slices.Equal(r.Missing.Sample, wantMissing[:3]) {
			t.Errorf("missing = %+v, want count %d and the first 3 of %v", r.Missing, len(wantMissing), wantMissing)
		}
	})
}

// An id reused by a new row (a restarted sequence) is two rows, not a
// duplicate: the old stored row is not_in_outbox, and the new row is
// missing until it is stored.
func TestVerifyTellsReusedIDsFromDuplicates(t *testing.T) {
	f := newFixture(t)
	ids := f.insert(100)
	f.deliver(ids, true)
	// Rows 10 and 20 are re-created with other values: the old ones stay
	// in ClickHouse.
	reused := pick(ids, 10, 20)
	f.exec(`UPDATE event_outbox SET event_type = 'order.reborn' WHERE id = ANY($1)`, reused)
	r := f.verify(Options{})
	// The digest compares ids: with one stored row per id this is not seen
	// (the package comment says so).
	if !r.Clean() || r.NotInOutbox.Count != 0 {
		t.Fatalf("before the new rows are stored: %+v", r)
	}
	// The new row 10 is delivered (the sink tells it from the old one).
	f.deliver(reused[:1], false)
	r = f.verify(Options{})
	if r.Duplicated.Count != 0 || r.Missing.Count != 0 || !slices.Equal(r.NotInOutbox.Sample, reused[:1]) {
		t.Errorf("new row stored beside the old one: %+v", r)
	}
	// Stored twice now: a duplicate of the new row.
	f.chExec(fmt.Sprintf("INSERT INTO `%[1]s`.events SELECT * FROM `%[1]s`.events WHERE id = %[2]d AND event_type = 'order.reborn'", f.o.CHDB, reused[0]))
	r = f.verify(Options{})
	if !slices.Equal(r.Duplicated.Sample, reused[:1]) || !slices.Equal(r.NotInOutbox.Sample, reused[:1]) || r.Missing.Count != 0 {
		t.Errorf("new row stored twice beside the old one: %+v", r)
	}
}

// Empty sides, gaps in the ids and ranges that hold nothing.
func TestVerifyEmptyAndSparse(t *testing.T) {
	f := newFixture(t)
	if r := f.verify(Options{}); !r.Clean() || r.Rows != 0 {
		t.Fatalf("empty outbox: %+v", r)
	}
	ids := f.insert(10)
	f.deliver(ids, true)
	// A gap of many buckets, on both sides.
	f.exec(`SELECT setval('event_outbox_id_seq', 50000000)`)
	more := f.insert(10)
	f.deliver(more, true)
	f.chDelete(more[5:6])
	var chunks int
	r := f.verify(Options{Progress: func(Progress) { chunks++ }})
	if !slices.Equal(r.Missing.Sample, more[5:6]) || r.Rows != 20 {
		t.Errorf("sparse ids: %+v", r)
	}
	if chunks > 4 {
		t.Errorf("%d chunks for two clusters of ids: the gap was walked, not jumped", chunks)
	}
	if r := f.verify(Options{FromID: 100, ToID: 200}); !r.Clean() || r.Rows != 0 {
		t.Errorf("empty range: %+v", r)
	}
	// ClickHouse truncated: everything is missing.
	f.chExec(fmt.Sprintf("TRUNCATE TABLE `%s`.events", f.o.CHDB))
	if r := f.verify(Options{}); r.Missing.Count != 20 {
		t.Errorf("truncated table: %+v", r)
	}
}
