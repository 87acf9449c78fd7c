package pipeline_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/pipeline"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// feed sends items from a goroutine, counting those the pipeline took; done
// is closed once all are taken.
func feed(h *harness, its []pipeline.Item) (taken *atomic.Int64, done chan struct{}) {
	taken, done = new(atomic.Int64), make(chan struct{})
	go func() {
		defer close(done)
		for _, it := range its {
			h.in <- it
			taken.Add(1)
		}
	}()
	return taken, done
}

// settled waits until n items are taken, then gives the pipeline every
// chance to take more (it must not: it is full).
func settled(t *testing.T, taken *atomic.Int64, n int64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d items taken", n), func() bool { return taken.Load() >= n })
	for range 20 {
		time.Sleep(5 * time.Millisecond)
		if got := taken.Load(); got > n {
			t.Fatalf("%d items taken while the writer is busy, want %d", got, n)
		}
	}
}

// TestGroupCommit: while an insert is in flight, the next batch keeps
// filling past batch.size, up to MaxRows rows or MaxBytes bytes; with the
// queue full too, no more input is taken. When the writer is free again the
// grown batch goes at once, as one insert.
func TestGroupCommit(t *testing.T) {
	tests := []struct {
		name string
		opts pipeline.Options
		size int // bytes of each row
		// taken: rows taken while the first write (of opts.Size rows) is
		// stuck; next: the sizes of the writes that follow it.
		taken int64
		next  []int
	}{
		{name: "up to max_rows", opts: pipeline.Options{Size: 5, MaxRows: 20}, size: 1,
			taken: 20, next: []int{20}},
		{name: "up to max_bytes", opts: pipeline.Options{Size: 5, MaxRows: 1000, MaxBytes: 100}, size: 10,
			taken: 10, next: []int{10}},
		{name: "max_bytes with a held row", opts: pipeline.Options{Size: 2, MaxRows: 1000, MaxBytes: 100}, size: 30,
			// Three rows fit; the fourth is held back for the next batch.
			taken: 4, next: []int{3}},
		{name: "a queue of full batches", opts: pipeline.Options{Size: 5, MaxRows: 20, Queue: 2}, size: 1,
			taken: 60, next: []int{20, 20, 20}},
		{name: "no growth: max_rows 0 is batch.size", opts: pipeline.Options{Size: 5}, size: 1,
			taken: 5, next: []int{5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.FlushInterval = time.Hour
			var started atomic.Int32
			release := make(chan struct{})
			h := newHarness(t, tt.opts, 0, 0, func(f *fakeDest) {
				block := blockingWrite(release, &started)
				f.write = func(ctx context.Context, ids []int64) (sink.Result, error) {
					if ids[0] == 1 {
						return block(ctx, ids)
					}
					return sink.Result{Inserted: len(ids)}, nil
				}
			})
			first := int64(tt.opts.Size)
			var all []pipeline.Item
			for id := int64(1); id <= first+tt.taken+50; id++ {
				all = append(all, sizedRow(id, tt.size))
			}
			h.send(all[:first]...)
			waitFor(t, "the first write", func() bool { return started.Load() == 1 })
			taken, _ := feed(h, all[first:])
			settled(t, taken, tt.taken)
			close(release)
			waitFor(t, "the grown batches written", func() bool { return len(h.dest.batchSizes()) > len(tt.next) })
			got := h.dest.batchSizes()
			if got[0] != int(first) || !slices.Equal(got[1:len(tt.next)+1], tt.next) {
				t.Errorf("writes %v, want %d then %v", got, first, tt.next)
			}
		})
	}
}

// TestBacklogPacing: a batch that reached batch.size while the writer was
// busy (a backlog) is no longer ready at batch.size: it goes when it is full
// or flush_interval after its first row, so a backlog is not delivered as
// one insert per batch.size rows just because the writer is fast. When no
// row comes for the quiet gap the backlog is over and the batch goes at
// once. A partial batch on an idle stream still goes after flush_interval.
func TestBacklogPacing(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		quiet    time.Duration
		maxRows  int
		// grown: rows sent behind the stuck first write (of 5 rows);
		// more: rows sent after the writer is free again.
		grown, more int64
		want        []int
	}{
		{name: "grown batch waits for its interval", interval: time.Second, quiet: time.Hour, maxRows: 100,
			grown: 7, more: 3, want: []int{5, 10}},
		{name: "full batch goes at once", interval: time.Hour, quiet: time.Hour, maxRows: 8,
			grown: 8, more: 0, want: []int{5, 8}},
		{name: "a quiet stream ends the backlog", interval: time.Hour, quiet: 20 * time.Millisecond, maxRows: 100,
			grown: 7, more: 0, want: []int{5, 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var started atomic.Int32
			release := make(chan struct{})
			opts := pipeline.WithQuietGap(pipeline.Options{Size: 5, MaxRows: tt.maxRows, FlushInterval: tt.interval}, tt.quiet)
			h := newHarness(t, opts, 0, 0, func(f *fakeDest) {
				block := blockingWrite(release, &started)
				f.write = func(ctx context.Context, ids []int64) (sink.Result, error) {
					if ids[0] == 1 {
						return block(ctx, ids)
					}
					return sink.Result{Inserted: len(ids)}, nil
				}
			})
			h.send(rows(1, 5)...)
			waitFor(t, "the first write", func() bool { return started.Load() == 1 })
			h.send(rows(6, 5+tt.grown)...)
			close(release)
			// The writer is free now; a batch that still took rows after
			// it was (the interval had not passed) shows the pacing.
			h.send(rows(6+tt.grown, 5+tt.grown+tt.more)...)
			waitFor(t, "the grown batch written", func() bool { return len(h.dest.batchSizes()) == len(tt.want) })
			if got := h.dest.batchSizes(); !slices.Equal(got, tt.want) {
				t.Errorf("writes %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("idle stream", func(t *testing.T) {
		h := newHarness(t, pipeline.Options{Size: 10, MaxRows: 100, FlushInterval: 20 * time.Millisecond}, 0, 0, nil)
		h.send(rows(1, 3)...)
		h.send(commitItem(100))
		waitFor(t, "the partial batch durable", func() bool { return h.tracker.Durable() == 100 })
		if got := h.dest.batchSizes(); !slices.Equal(got, []int{3}) {
			t.Errorf("writes %v, want [3]", got)
		}
	})
}

// TestGrownBatchesKeepTransactionsWhole: with batches growing while the
// writer is slow, a transaction larger than a batch becomes durable only
// with its last batch, and the tracker never passes what is delivered
// (DESIGN §3.1). Durable is checked at every write and marking.
func TestGrownBatchesKeepTransactionsWhole(t *testing.T) {
	const start = 50
	txns := []txn{{1, 3, 100}, {4, 70, 200}, {71, 75, 300}, {76, 200, 400}, {201, 207, 0}}
	var (
		mu      sync.Mutex
		done    = map[int64]bool{}
		highest pglogrepl.LSN
	)
	check := func(tracker *checkpoint.Tracker, where string) {
		mu.Lock()
		defer mu.Unlock()
		d := tracker.Durable()
		if lim := allowed(start, txns, done); d > lim {
			t.Errorf("%s: durable %s, but only %s is fully delivered", where, d, lim)
		}
		if d < highest {
			t.Errorf("%s: durable went back from %s to %s", where, highest, d)
		}
		highest = d
	}
	var started atomic.Int32
	release := make(chan struct{})
	opts := pipeline.Options{Size: 5, MaxRows: 12, FlushInterval: time.Hour}
	h := newHarness(t, opts, start, 0, func(f *fakeDest) {
		block := blockingWrite(release, &started)
		f.write = func(ctx context.Context, ids []int64) (sink.Result, error) {
			check(f.tracker, fmt.Sprintf("write %v", ids))
			time.Sleep(time.Millisecond) // slow: the next batch grows
			return block(ctx, ids)
		}
		f.markProcessed = func(_ context.Context, ids []int64) error {
			check(f.tracker, fmt.Sprintf("mark %v", ids))
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				done[id] = true
			}
			return nil
		}
	})
	var all []pipeline.Item
	for _, tx := range txns {
		all = append(all, rows(tx.from, tx.to)...)
		if tx.end != 0 {
			all = append(all, commitItem(tx.end))
		}
	}
	// rows 1..3, commit 100, rows 4 and 5: the first batch, stuck in its
	// write; then 12 rows fill the next batch, and the big transaction is
	// not durable.
	h.send(all[:6]...)
	waitFor(t, "the first write", func() bool { return started.Load() == 1 })
	taken, fed := feed(h, all[6:])
	settled(t, taken, 12)
	check(h.tracker, "stuck")
	close(release)
	<-fed
	if err := h.closeAndWait(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	check(h.tracker, "after Run")
	if d := h.tracker.Durable(); d != 400 {
		t.Errorf("final durable %s, want 400", d)
	}
	sizes := h.dest.batchSizes()
	if len(sizes) < 2 || sizes[1] != 12 || slices.Max(sizes) > 12 {
		t.Errorf("writes %v, want the second grown to max_rows 12 and none larger", sizes)
	}
	if got := h.dest.processed(); !slices.Equal(got, ids(1, 207)) {
		t.Errorf("processed %v, want 1..207 once each", got)
	}
}
