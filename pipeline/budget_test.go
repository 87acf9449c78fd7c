package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/pipeline"
)

// TestBudget: a row is admitted while it fits, or alone when nothing is
// held (a row bigger than the budget must still get through), and releases
// make room again.
func TestBudget(t *testing.T) {
	type step struct {
		acquire int   // bytes to TryAcquire, or
		release int64 // bytes to Release
		ok      bool  // TryAcquire's answer
		used    int64 // Used() after the step
	}
	tests := []struct {
		name  string
		limit int64
		steps []step
	}{
		{name: "fits, then full", limit: 100, steps: []step{
			{acquire: 60, ok: true, used: 60}, {acquire: 40, ok: true, used: 100}, {acquire: 1, ok: false, used: 100},
		}},
		{name: "release makes room", limit: 100, steps: []step{
			{acquire: 70, ok: true, used: 70}, {acquire: 40, ok: false, used: 70},
			{release: 70, used: 0}, {acquire: 40, ok: true, used: 40},
		}},
		{name: "a row over the budget goes alone", limit: 100, steps: []step{
			{acquire: 10, ok: true, used: 10}, {acquire: 500, ok: false, used: 10},
			{release: 10, used: 0}, {acquire: 500, ok: true, used: 500}, {acquire: 1, ok: false, used: 500},
			{release: 500, used: 0},
		}},
		{name: "empty items are free", limit: 100, steps: []step{
			{acquire: 100, ok: true, used: 100}, {acquire: 0, ok: true, used: 100},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := pipeline.NewBudget(tt.limit)
			for i, s := range tt.steps {
				if s.release > 0 {
					b.Release(s.release)
				} else if ok := b.TryAcquire(s.acquire); ok != s.ok {
					t.Fatalf("step %d: TryAcquire(%d) = %v, want %v", i, s.acquire, ok, s.ok)
				}
				if u := b.Used(); u != s.used {
					t.Fatalf("step %d: used %d, want %d", i, u, s.used)
				}
			}
		})
	}
}

// TestBudgetNil: a nil budget bounds nothing.
func TestBudgetNil(t *testing.T) {
	var b *pipeline.Budget
	if !b.TryAcquire(1 << 40) {
		t.Fatal("nil budget refused a row")
	}
	b.Release(1 << 40)
	if err := b.Acquire(context.Background(), 1<<40, nil); err != nil {
		t.Fatal(err)
	}
}

// TestBudgetAcquireWaits: Acquire waits for a release, and gives up when
// its stop channel closes or its context ends.
func TestBudgetAcquireWaits(t *testing.T) {
	b := pipeline.NewBudget(100)
	if !b.TryAcquire(100) {
		t.Fatal("empty budget refused 100 bytes")
	}
	got := make(chan error, 1)
	go func() { got <- b.Acquire(context.Background(), 50, nil) }()
	select {
	case err := <-got:
		t.Fatalf("Acquire returned %v with the budget full", err)
	case <-time.After(20 * time.Millisecond):
	}
	b.Release(100)
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(deadline):
		t.Fatal("Acquire still waiting after a release")
	}

	stop := make(chan struct{})
	close(stop)
	if err := b.Acquire(context.Background(), 80, stop); !errors.Is(err, pipeline.ErrBudgetStopped) {
		t.Errorf("Acquire with stop closed: %v, want ErrBudgetStopped", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Acquire(ctx, 80, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Acquire with ctx cancelled: %v, want context.Canceled", err)
	}
}

// TestBoundedBytes: with the writer stuck, a source that acquires every
// row's bytes from the pipeline's budget (as the stream, the backfill and
// the re-drive do) gets no more than the budget into the pipeline, whatever
// the row size and however many batches could queue; once the writer
// recovers, the budget is released and every row is delivered in order
// (DESIGN.md §3 invariant 14).
func TestBoundedBytes(t *testing.T) {
	tests := []struct {
		rowSize  int
		maxBytes int64
		queue    int
		chanCap  int
		// size and maxRows, when set, turn group commit on: batches are
		// ready at size rows and grow to maxRows while the writer is busy.
		size, maxRows int
	}{
		{rowSize: 10, maxBytes: 100, queue: 0, chanCap: 0},
		{rowSize: 10, maxBytes: 100, queue: 2, chanCap: 1000},
		{rowSize: 30, maxBytes: 100, queue: 8, chanCap: 1000},
		{rowSize: 64 << 10, maxBytes: 16 << 20, queue: 2, chanCap: 1024},
		// Rows bigger than a batch's cap: one at a time.
		{rowSize: 250, maxBytes: 100, queue: 2, chanCap: 1024},
		// Group commit: batches grow past size, still within the budget.
		{rowSize: 10, maxBytes: 100, queue: 0, chanCap: 0, size: 3, maxRows: 1 << 20},
		{rowSize: 30, maxBytes: 1000, queue: 2, chanCap: 1000, size: 2, maxRows: 1 << 20},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("rows of %d bytes, max_bytes %d, queue %d, channel %d, size %d", tt.rowSize, tt.maxBytes, tt.queue, tt.chanCap, tt.size), func(t *testing.T) {
			if tt.size == 0 {
				tt.size, tt.maxRows = 1<<20, 1<<20
			}
			var started atomic.Int32
			release := make(chan struct{})
			budget := pipeline.DefaultBudget(tt.maxBytes)
			h := newHarness(t, pipeline.Options{Size: tt.size, MaxRows: tt.maxRows, MaxBytes: tt.maxBytes, FlushInterval: time.Hour,
				Queue: tt.queue, Budget: budget}, 0, tt.chanCap, func(f *fakeDest) {
				f.write = blockingWrite(release, &started)
			})
			limit := max(budget.Limit(), int64(tt.rowSize))
			total := 4*limit/int64(tt.rowSize) + 4
			var accepted atomic.Int64 // bytes handed on
			producerDone := make(chan struct{})
			go func() {
				defer close(producerDone)
				for id := int64(1); id <= total; id++ {
					if err := budget.Acquire(context.Background(), tt.rowSize, nil); err != nil {
						t.Error(err)
						return
					}
					h.in <- sizedRow(id, tt.rowSize)
					accepted.Add(int64(tt.rowSize))
				}
				h.in <- commitItem(pglogrepl.LSN(total))
				close(h.in)
			}()
			waitFor(t, "the writer to start", func() bool { return started.Load() == 1 })
			// Give an unbounded pipeline every chance to take more.
			for range 20 {
				time.Sleep(5 * time.Millisecond)
				if n := accepted.Load(); n > limit {
					t.Fatalf("%d bytes got in with the writer stuck, want at most %d", n, limit)
				}
				if u := budget.Used(); u > limit {
					t.Fatalf("budget holds %d bytes, limit %d", u, limit)
				}
			}
			// Batches are cut by bytes only (no timer), so the budget fills
			// up to less than one row, unless the batches hold less: with
			// group commit, the first one of size rows and the ones that
			// grow behind it up to max_bytes.
			perBatch := max(tt.maxBytes/int64(tt.rowSize), 1) * int64(tt.rowSize)
			want := min(limit, int64(tt.size*tt.rowSize)+int64(tt.queue+1)*perBatch)
			if n := accepted.Load(); n < want-int64(tt.rowSize) {
				t.Errorf("only %d bytes got in with the writer stuck, want about %d: the budget is not used", n, want)
			}
			close(release)
			select {
			case <-producerDone:
			case <-time.After(deadline):
				t.Fatal("producer still blocked after the writer recovered")
			}
			if err := h.wait(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := h.dest.processed(); len(got) != int(total) {
				t.Errorf("processed %d rows, want %d", len(got), total)
			}
			for _, n := range h.dest.batchSizes() {
				if int64(n*tt.rowSize) > max(tt.maxBytes, int64(tt.rowSize)) {
					t.Errorf("a batch of %d rows of %d bytes, over max_bytes %d", n, tt.rowSize, tt.maxBytes)
				}
			}
			if u := budget.Used(); u != 0 {
				t.Errorf("budget holds %d bytes after every row was delivered, want 0", u)
			}
		})
	}
}
