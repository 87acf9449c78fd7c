// Package verify reconciles the outbox with ClickHouse: it finds the
// `processed` outbox rows ClickHouse lacks (missing), the rows ClickHouse
// stores more than once (duplicated), and the rows ClickHouse holds that the
// outbox no longer has (not_in_outbox, as after outbox.retention, for
// information). `cdc verify` reports them, `cdc replay` re-delivers the
// missing ones, and the daemon's periodic verify counts them in metrics.
//
// The rules it keeps:
//
//   - Cheap first, exact only where needed. Ids are grouped in buckets of
//     BucketWidth consecutive ids; each side computes, per bucket, the
//     number of rows, the sum of id mod P and the sum of a non-linear hash
//     of the id (digest.go; the same arithmetic in both SQL dialects). Only
//     buckets whose digests differ are compared id by id.
//   - Gentle on PostgreSQL. Each statement reads one chunk of ChunkBuckets
//     buckets by primary-key range, in its own implicit transaction: no
//     snapshot is held across chunks, and vacuum is never held back for
//     the length of a run. ClickHouse, which has no index on id, is read
//     one window of many chunks per query. Memory is bounded by a window's
//     digests and a group of buckets compared exactly, whatever the size
//     of the outbox.
//   - Never a false "missing". Where buckets are compared exactly,
//     PostgreSQL is read before ClickHouse. A row is marked processed only
//     once it is in ClickHouse, so a row processed at the first read is in
//     ClickHouse at the second unless ClickHouse lost it. Rows not yet
//     processed (pending, failed, in flight) are never missing. A row that
//     ClickHouse has and PostgreSQL did not (yet) show is looked up again
//     after the ClickHouse read before it is called not_in_outbox: the
//     stream may have delivered a row committed after the PostgreSQL read.
//   - Identity (sink.ColumnFingerprint). An id stored with two different
//     fingerprints is two rows, not a duplicate: the id was reused (a
//     restarted sequence, a re-created outbox). The outbox row's
//     fingerprint decides which stored row is it; the others are
//     not_in_outbox, and when none is, the outbox row is missing. A row
//     stored before fingerprints existed (0) is matched by id alone. The
//     fast digest compares ids only: an id whose one stored row belongs to
//     an earlier life of that id is not detected (reading every row's
//     values would cost more than the whole comparison).
//   - Duplicated counts ids stored more than once (by the same identity);
//     verify reports them and never deletes anything.
package verify

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
)

// Defaults of Options.
const (
	DefaultBucketWidth  = 4096
	DefaultChunkBuckets = 256
	DefaultWindowChunks = 64
	DefaultGroupBuckets = 64
	DefaultSamples      = 100
	DefaultParallel     = 2
)

// Options say what to compare and how.
type Options struct {
	// Table is the outbox, [schema.]name.
	Table string
	// Database and ClickHouseTable name the ClickHouse table.
	Database, ClickHouseTable string
	// FromID and ToID bound the ids compared (inclusive). Use
	// math.MinInt64 / math.MaxInt64 for no bound.
	FromID, ToID int64

	// BucketWidth is the number of consecutive ids one digest covers.
	BucketWidth int64
	// ChunkBuckets is how many buckets one PostgreSQL statement digests.
	ChunkBuckets int
	// WindowChunks is how many chunks one ClickHouse digest query covers.
	WindowChunks int
	// GroupBuckets is how many differing buckets are compared id by id
	// with one query on each side.
	GroupBuckets int
	// Samples is how many ids each finding lists.
	Samples int
	// Parallel is how many PostgreSQL chunk digests run at once (the pool
	// needs one connection more).
	Parallel int

	// Progress, when set, is called after each chunk.
	Progress func(Progress)
	// Missing, when set, is called with the missing ids of each group of
	// buckets compared exactly, in ascending order, as they are found
	// (cdc replay re-delivers them). An error stops the run.
	Missing func(ctx context.Context, ids []int64) error
	Logger  *slog.Logger
}

// Progress is how far a run got.
type Progress struct {
	// Done and Total are ids of the range covered so far and in all.
	Done, Total uint64
	// Rows is the number of processed outbox rows compared so far.
	Rows int64
}

// Finding is one kind of difference: how many ids, and the first few.
type Finding struct {
	Count  int64   `json:"count"`
	Sample []int64 `json:"sample"`
}

func (f *Finding) add(id int64, samples int) {
	f.Count++
	if len(f.Sample) < samples {
		f.Sample = append(f.Sample, id)
	}
}

// Report is the outcome of a run.
type Report struct {
	FromID int64 `json:"from_id"`
	ToID   int64 `json:"to_id"`
	// Rows is the number of processed outbox rows compared.
	Rows int64 `json:"rows"`
	// ClickHouseRows is the number of ClickHouse rows in the range.
	ClickHouseRows int64 `json:"clickhouse_rows"`
	// BucketsDiffering is how many buckets were compared id by id.
	BucketsDiffering int64   `json:"buckets_differing"`
	Missing          Finding `json:"missing"`
	Duplicated       Finding `json:"duplicated"`
	NotInOutbox      Finding `json:"not_in_outbox"`
	Seconds          float64 `json:"seconds"`
}

// Clean reports whether nothing is missing or duplicated (not_in_outbox is
// for information).
func (r *Report) Clean() bool { return r.Missing.Count == 0 && r.Duplicated.Count == 0 }

// Run compares the outbox with ClickHouse over the range of opts.
func Run(ctx context.Context, pool *pgxpool.Pool, ch driver.Conn, opts Options) (*Report, error) {
	v := newVerifier(pool, ch, opts)
	start := time.Now()
	err := v.run(ctx)
	v.report.Seconds = time.Since(start).Seconds()
	if err != nil {
		return nil, err
	}
	return &v.report, nil
}

type verifier struct {
	pool   *pgxpool.Pool
	ch     driver.Conn
	opts   Options
	log    *slog.Logger
	pgTbl  string // quoted
	chTbl  string // quoted
	report Report

	// win holds the ClickHouse digests of the ids [win.lo, win.hi].
	win window
	// pending are differing buckets not yet compared exactly.
	pending []span
}

func newVerifier(pool *pgxpool.Pool, ch driver.Conn, opts Options) *verifier {
	if opts.BucketWidth <= 0 {
		opts.BucketWidth = DefaultBucketWidth
	}
	if opts.ChunkBuckets <= 0 {
		opts.ChunkBuckets = DefaultChunkBuckets
	}
	if opts.WindowChunks <= 0 {
		opts.WindowChunks = DefaultWindowChunks
	}
	if opts.GroupBuckets <= 0 {
		opts.GroupBuckets = DefaultGroupBuckets
	}
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.Samples <= 0 {
		opts.Samples = DefaultSamples
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	v := &verifier{pool: pool, ch: ch, opts: opts, log: opts.Logger,
		pgTbl: checkpoint.QuoteTable(opts.Table),
		chTbl: chclient.QuoteIdent(opts.Database) + "." + chclient.QuoteIdent(opts.ClickHouseTable)}
	v.report.Missing.Sample, v.report.Duplicated.Sample, v.report.NotInOutbox.Sample = []int64{}, []int64{}, []int64{}
	return v
}

// run walks the range chunk by chunk.
func (v *verifier) run(ctx context.Context) error {
	lo, hi, ok, err := v.bounds(ctx)
	v.report.FromID, v.report.ToID = v.opts.FromID, v.opts.ToID
	if err != nil || !ok {
		return err
	}
	v.report.FromID, v.report.ToID = lo, hi
	total := uint64(hi-lo) + 1
	first := lo
	ahead := &prefetch{v: v, hi: hi}
	defer ahead.stop()
	for {
		chunkHi := v.chunkEnd(lo, hi, v.opts.ChunkBuckets)
		if lo > v.win.hi || !v.win.loaded {
			if err := v.loadWindow(ctx, lo, v.chunkEnd(lo, hi, v.opts.ChunkBuckets*v.opts.WindowChunks)); err != nil {
				return err
			}
		}
		f, err := ahead.next(ctx, lo)
		if err != nil {
			return err
		}
		pg := f.digests
		empty := len(pg) == 0 && !v.win.hasBuckets(v.bucket(lo), v.bucket(chunkHi))
		v.diff(pg, lo, chunkHi)
		if len(v.pending) >= v.opts.GroupBuckets || chunkHi == hi {
			if err := v.flushPending(ctx); err != nil {
				return err
			}
		}
		if v.opts.Progress != nil {
			v.opts.Progress(Progress{Done: uint64(chunkHi-first) + 1, Total: total, Rows: v.report.Rows})
		}
		if chunkHi == hi {
			break
		}
		next := chunkHi + 1
		if empty {
			// A gap in the ids: jump to the next id either side has.
			if next, ok, err = v.nextID(ctx, chunkHi); err != nil {
				return err
			}
			if !ok || next > hi {
				if v.opts.Progress != nil {
					v.opts.Progress(Progress{Done: total, Total: total, Rows: v.report.Rows})
				}
				break
			}
		}
		lo = next
	}
	return v.flushPending(ctx)
}

// bounds narrows the requested range to where either side has rows.
func (v *verifier) bounds(ctx context.Context) (lo, hi int64, ok bool, err error) {
	pgMin, pgMax, pgOK, err := v.pgBounds(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	chMin, chMax, chOK, err := v.chBounds(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	switch {
	case pgOK && chOK:
		lo, hi = min(pgMin, chMin), max(pgMax, chMax)
	case pgOK:
		lo, hi = pgMin, pgMax
	case chOK:
		lo, hi = chMin, chMax
	default:
		return 0, 0, false, nil
	}
	lo, hi = max(lo, v.opts.FromID), min(hi, v.opts.ToID)
	return lo, hi, lo <= hi, nil
}

// diff records the buckets of [lo, hi] whose digests differ, and counts
// rows.
func (v *verifier) diff(pg map[int64]digest, lo, hi int64) {
	for _, d := range pg {
		v.report.Rows += d.n
	}
	v.win.each(v.bucket(lo), v.bucket(hi), func(b int64, d digest) {
		v.report.ClickHouseRows += d.n
		if pg[b] != d {
			v.pending = append(v.pending, v.span(b, lo, hi))
		}
	})
	for b := range pg {
		if _, ok := v.win.get(b); !ok {
			v.pending = append(v.pending, v.span(b, lo, hi))
		}
	}
}

// flushPending compares the differing buckets found so far id by id, a
// group at a time.
func (v *verifier) flushPending(ctx context.Context) error {
	sortSpans(v.pending)
	for len(v.pending) > 0 {
		n := min(len(v.pending), v.opts.GroupBuckets)
		if err := v.compareExactly(ctx, v.pending[:n]); err != nil {
			return err
		}
		v.report.BucketsDiffering += int64(n)
		v.pending = v.pending[n:]
	}
	v.pending = nil
	return nil
}

// span is an inclusive range of ids.
type span struct{ lo, hi int64 }

// bucket is the digest bucket of id: truncating division, as PostgreSQL's
// `/` and ClickHouse's intDiv both do.
func (v *verifier) bucket(id int64) int64 { return id / v.opts.BucketWidth }

// bucketSpan is the ids of bucket b (bucket 0 spans both signs).
func (v *verifier) bucketSpan(b int64) span {
	w := v.opts.BucketWidth
	switch {
	case b > 0:
		return span{b * w, satAdd(b*w, w-1)}
	case b < 0:
		return span{b*w - (w - 1), b * w}
	}
	return span{-(w - 1), w - 1}
}

// span is bucket b clipped to [lo, hi].
func (v *verifier) span(b, lo, hi int64) span {
	s := v.bucketSpan(b)
	return span{max(s.lo, lo), min(s.hi, hi)}
}

// chunkEnd is the last id of the n buckets starting with lo's, at most hi.
func (v *verifier) chunkEnd(lo, hi int64, n int) int64 {
	b := v.bucket(lo)
	if b > math.MaxInt64/v.opts.BucketWidth-int64(n) {
		return hi
	}
	return min(v.bucketSpan(b+int64(n)-1).hi, hi)
}

func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

func errf(op string, err error) error { return fmt.Errorf("verify: %s: %w", op, err) }

// IDsCreated is the id range of the outbox rows created in [since, until)
// (created_at, read as UTC): what --since/--until compare. Every row of that
// range is compared, whenever it was created. ok is false when no row was
// created then. It reads the whole table once (created_at has no index).
func IDsCreated(ctx context.Context, pool *pgxpool.Pool, table string, since, until time.Time) (from, to int64, ok bool, err error) {
	var mn, mx *int64
	err = pool.QueryRow(ctx, `SELECT min(id), max(id) FROM `+checkpoint.QuoteTable(table)+` WHERE created_at >= $1 AND created_at < $2`,
		since.UTC(), until.UTC()).Scan(&mn, &mx)
	if err != nil {
		return 0, 0, false, errf("find the ids created from "+since.Format(time.RFC3339)+" to "+until.Format(time.RFC3339), err)
	}
	if mn == nil {
		return 0, 0, false, nil
	}
	return *mn, *mx, true, nil
}

// TrailingIDs is the id range of the newest rows: from just after the last
// row created before since to the largest id. It reads the primary key
// backwards from the newest row, so its cost is the window's rows, not the
// table's (the daemon's periodic verify). It assumes created_at grows with
// id, as it does for an outbox filled by its sequence; rows committed late
// only shift the window's edge.
func TrailingIDs(ctx context.Context, pool *pgxpool.Pool, table string, since time.Time) (from, to int64, ok bool, err error) {
	q := checkpoint.QuoteTable(table)
	var mx, before *int64
	err = pool.QueryRow(ctx, `SELECT (SELECT max(id) FROM `+q+`),
	  (SELECT id FROM `+q+` WHERE created_at < $1 ORDER BY id DESC LIMIT 1)`, since.UTC()).Scan(&mx, &before)
	if err != nil {
		return 0, 0, false, errf("find the ids created since "+since.Format(time.RFC3339), err)
	}
	if mx == nil {
		return 0, 0, false, nil
	}
	from = math.MinInt64
	if before != nil {
		from = *before + 1
	}
	return from, *mx, from <= *mx, nil
}
