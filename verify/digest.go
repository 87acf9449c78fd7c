package verify

import (
	"context"
	"fmt"
	"math"
	"slices"
)

// modulus keeps every value of the digest arithmetic inside a signed 64-bit
// integer on both sides: x < 2^31, x*48271 < 2^47, the sums of a bucket's
// rows < 2^31 times its rows. It is prime, so id mod P spreads ids.
const modulus = 2147483647

// digest sums one bucket on one side. Two buckets match when all three
// agree: count alone misses a lost row offset by a duplicate, a plain sum
// of ids misses two offsetting ones, and the non-linear hash (multiply,
// xor-shift, multiply) makes any other coincidence about as likely as a
// 31-bit collision.
type digest struct{ n, sum, hash int64 }

// rowHash is the per-row hash both databases compute (pgHash, chHash); it
// is here for tests and as the reference.
func rowHash(id int64) int64 {
	x := id % modulus
	a := x * 48271 % modulus
	return ((a ^ (a >> 15)) * 69621) % modulus
}

// pgHash is rowHash in PostgreSQL (integer operators on int8; `#` is xor,
// `>>` an arithmetic shift, `%` truncating like Go's).
const pgHash = `((((id % 2147483647) * 48271 % 2147483647) # (((id % 2147483647) * 48271 % 2147483647) >> 15)) * 69621 % 2147483647)`

// chHash is rowHash in ClickHouse. Its modulo returns the divisor's width
// (Int32 here), so each step is widened to Int64 before multiplying.
const chHash = `toInt64(toInt64(bitXor(toInt64(toInt64(id % 2147483647) * 48271) % 2147483647, bitShiftRight(toInt64(toInt64(id % 2147483647) * 48271) % 2147483647, 15)) * 69621) % 2147483647)`

// pgBounds is the smallest and largest id of the outbox.
func (v *verifier) pgBounds(ctx context.Context) (lo, hi int64, ok bool, err error) {
	var mn, mx *int64
	if err := v.pool.QueryRow(ctx, `SELECT min(id), max(id) FROM `+v.pgTbl).Scan(&mn, &mx); err != nil {
		return 0, 0, false, errf("read the id range of "+v.opts.Table, err)
	}
	if mn == nil {
		return 0, 0, false, nil
	}
	return *mn, *mx, true, nil
}

// chBounds is the smallest and largest id stored in ClickHouse.
func (v *verifier) chBounds(ctx context.Context) (lo, hi int64, ok bool, err error) {
	var n uint64
	if err := v.ch.QueryRow(ctx, `SELECT count(), min(id), max(id) FROM `+v.chTbl).Scan(&n, &lo, &hi); err != nil {
		return 0, 0, false, errf("read the id range of "+v.chTbl, err)
	}
	return lo, hi, n > 0, nil
}

// pgDigests digests the processed rows of [lo, hi], by bucket: one short
// statement, by primary-key range.
func (v *verifier) pgDigests(ctx context.Context, lo, hi int64) (map[int64]digest, error) {
	q := fmt.Sprintf(`SELECT id / $3::int8, count(*), sum(id %% 2147483647)::int8, sum(%s)::int8 FROM %s
	  WHERE id >= $1 AND id <= $2 AND status = 'processed' GROUP BY 1`, pgHash, v.pgTbl)
	rows, err := v.pool.Query(ctx, q, lo, hi, v.opts.BucketWidth)
	if err != nil {
		return nil, errf(fmt.Sprintf("digest ids %d..%d of %s", lo, hi, v.opts.Table), err)
	}
	defer rows.Close()
	out := make(map[int64]digest, v.opts.ChunkBuckets)
	for rows.Next() {
		var b int64
		var d digest
		if err := rows.Scan(&b, &d.n, &d.sum, &d.hash); err != nil {
			return nil, errf(fmt.Sprintf("digest ids %d..%d of %s", lo, hi, v.opts.Table), err)
		}
		out[b] = d
	}
	if err := rows.Err(); err != nil {
		return nil, errf(fmt.Sprintf("digest ids %d..%d of %s", lo, hi, v.opts.Table), err)
	}
	return out, nil
}

// window holds ClickHouse's digests of [lo, hi], sorted by bucket.
type window struct {
	loaded  bool
	lo, hi  int64
	buckets []int64
	digests []digest
}

// loadWindow digests ClickHouse's rows of [lo, hi] by bucket. ClickHouse
// has no index on id (the table is ordered by event type and time), so
// every query reads the whole id column: one query covers many
// PostgreSQL chunks.
func (v *verifier) loadWindow(ctx context.Context, lo, hi int64) error {
	q := fmt.Sprintf(`SELECT intDiv(id, %d) AS b, count(), sum(toInt64(id %% 2147483647)), sum(%s) FROM %s
	  WHERE id >= %d AND id <= %d GROUP BY b ORDER BY b`, v.opts.BucketWidth, chHash, v.chTbl, lo, hi)
	rows, err := v.ch.Query(ctx, q)
	if err != nil {
		return errf(fmt.Sprintf("digest ids %d..%d of %s", lo, hi, v.chTbl), err)
	}
	defer rows.Close()
	w := window{loaded: true, lo: lo, hi: hi, buckets: v.win.buckets[:0], digests: v.win.digests[:0]}
	for rows.Next() {
		var b int64
		var n uint64
		var d digest
		if err := rows.Scan(&b, &n, &d.sum, &d.hash); err != nil {
			return errf(fmt.Sprintf("digest ids %d..%d of %s", lo, hi, v.chTbl), err)
		}
		d.n = int64(n)
		w.buckets = append(w.buckets, b)
		w.digests = append(w.digests, d)
	}
	if err := rows.Err(); err != nil {
		return errf(fmt.Sprintf("digest ids %d..%d of %s", lo, hi, v.chTbl), err)
	}
	v.win = w
	return nil
}

// get returns the digest of bucket b.
func (w *window) get(b int64) (digest, bool) {
	i, ok := slices.BinarySearch(w.buckets, b)
	if !ok {
		return digest{}, false
	}
	return w.digests[i], true
}

// each calls fn for every bucket of [from, to] in the window.
func (w *window) each(from, to int64, fn func(b int64, d digest)) {
	i, _ := slices.BinarySearch(w.buckets, from)
	for ; i < len(w.buckets) && w.buckets[i] <= to; i++ {
		fn(w.buckets[i], w.digests[i])
	}
}

// hasBuckets reports whether the window has a bucket in [from, to].
func (w *window) hasBuckets(from, to int64) bool {
	i, _ := slices.BinarySearch(w.buckets, from)
	return i < len(w.buckets) && w.buckets[i] <= to
}

// nextID is the smallest id above after on either side.
func (v *verifier) nextID(ctx context.Context, after int64) (int64, bool, error) {
	if after == math.MaxInt64 {
		return 0, false, nil
	}
	var pg *int64
	if err := v.pool.QueryRow(ctx, `SELECT min(id) FROM `+v.pgTbl+` WHERE id > $1`, after).Scan(&pg); err != nil {
		return 0, false, errf("find the next id of "+v.opts.Table, err)
	}
	next, ok := int64(math.MaxInt64), false
	if pg != nil {
		next, ok = *pg, true
	}
	// The window, when it reaches past after, already knows ClickHouse's.
	if i, _ := slices.BinarySearch(v.win.buckets, v.bucket(after)+1); i < len(v.win.buckets) {
		s := v.bucketSpan(v.win.buckets[i])
		return min(next, max(s.lo, after+1)), true, nil
	}
	if v.win.hi < math.MaxInt64 {
		var n uint64
		var ch int64
		q := fmt.Sprintf(`SELECT count(), min(id) FROM %s WHERE id > %d`, v.chTbl, max(after, v.win.hi))
		if err := v.ch.QueryRow(ctx, q).Scan(&n, &ch); err != nil {
			return 0, false, errf("find the next id of "+v.chTbl, err)
		}
		if n > 0 {
			next, ok = min(next, ch), true
		}
	}
	return next, ok, nil
}

// prefetch runs the PostgreSQL digests of the next chunks ahead of the
// comparison, Options.Parallel statements at a time, each on its own
// connection in its own implicit transaction: PostgreSQL scans a chunk per
// core while the previous one is compared.
type prefetch struct {
	v      *verifier
	hi     int64 // the range's last id
	ctx    context.Context
	cancel context.CancelFunc
	queue  []*pgFuture
}

// pgFuture is one chunk's digests, ready when done is closed.
type pgFuture struct {
	lo, hi  int64
	done    chan struct{}
	digests map[int64]digest
	err     error
}

// next returns the digests of the chunk that starts at lo, starting the
// chunks after it. Chunks started for another lo (before a jump over a
// gap) are dropped.
func (p *prefetch) next(ctx context.Context, lo int64) (*pgFuture, error) {
	if len(p.queue) > 0 && p.queue[0].lo != lo {
		p.stop()
	}
	if p.ctx == nil {
		p.ctx, p.cancel = context.WithCancel(ctx)
	}
	for len(p.queue) < max(p.v.opts.Parallel, 1) {
		start := lo
		if n := len(p.queue); n > 0 {
			if p.queue[n-1].hi >= p.hi {
				break
			}
			start = p.queue[n-1].hi + 1
		}
		f := &pgFuture{lo: start, hi: p.v.chunkEnd(start, p.hi, p.v.opts.ChunkBuckets), done: make(chan struct{})}
		go func(ctx context.Context) {
			defer close(f.done)
			f.digests, f.err = p.v.pgDigests(ctx, f.lo, f.hi)
		}(p.ctx)
		p.queue = append(p.queue, f)
	}
	f := p.queue[0]
	p.queue = p.queue[1:]
	select {
	case <-f.done:
		return f, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stop cancels the chunks in flight and waits for them.
func (p *prefetch) stop() {
	if p.cancel != nil {
		p.cancel()
	}
	for _, f := range p.queue {
		<-f.done
	}
	p.queue, p.ctx, p.cancel = nil, nil, nil
}
