package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// deadline bounds every wait: generous, so a slow -race run never flakes.
// No test asserts how long anything took.
const deadline = 10 * time.Second

// tinyRetry keeps retried operations fast.
var tinyRetry = pipeline.Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond}

// op is one call the pipeline made to the fake destination.
type op struct {
	kind    string // "write", "failed" or "processed"
	ids     []int64
	xids    []uint32      // "failed", "processed": the transactions the marking must see
	errs    []string      // "failed": the error texts
	durable pglogrepl.LSN // the tracker's durable LSN when the call was made
	err     error         // what the fake returned
}

func (o op) String() string {
	if o.err != nil {
		return fmt.Sprintf("%s%v!", o.kind, o.ids)
	}
	return fmt.Sprintf("%s%v", o.kind, o.ids)
}

// fakeDest is both the Writer (ClickHouse) and the Marker (PostgreSQL). It
// records every call with the tracker's durable LSN at that moment; the
// hooks decide what each call returns (nil hooks: success, nothing
// rejected).
type fakeDest struct {
	tracker *checkpoint.Tracker

	write         func(ctx context.Context, ids []int64) (sink.Result, error)
	markProcessed func(ctx context.Context, ids []int64) error
	markFailed    func(ctx context.Context, f []checkpoint.Failure) error

	mu  sync.Mutex
	ops []op
}

func (f *fakeDest) record(o op) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, o)
}

func (f *fakeDest) Write(ctx context.Context, rows []sink.Row) (sink.Result, error) {
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	o := op{kind: "write", ids: ids, durable: f.tracker.Durable()}
	res := sink.Result{Inserted: len(rows)}
	var err error
	if f.write != nil {
		res, err = f.write(ctx, ids)
	}
	o.err = err
	f.record(o)
	return res, err
}

func (f *fakeDest) MarkProcessed(ctx context.Context, ids []int64, xids []uint32) error {
	o := op{kind: "processed", ids: slices.Clone(ids), xids: slices.Clone(xids), durable: f.tracker.Durable()}
	var err error
	if f.markProcessed != nil {
		err = f.markProcessed(ctx, ids)
	}
	o.err = err
	if len(ids) > 0 || err != nil {
		f.record(o)
	}
	return err
}

func (f *fakeDest) MarkFailed(ctx context.Context, failures []checkpoint.Failure, xids []uint32) error {
	o := op{kind: "failed", xids: slices.Clone(xids), durable: f.tracker.Durable()}
	for _, x := range failures {
		o.ids = append(o.ids, x.ID)
		o.errs = append(o.errs, x.Error)
	}
	var err error
	if f.markFailed != nil {
		err = f.markFailed(ctx, failures)
	}
	o.err = err
	f.record(o)
	return err
}

// calls returns a copy of the recorded calls, optionally only those of one kind.
func (f *fakeDest) calls(kind string) []op {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []op
	for _, o := range f.ops {
		if kind == "" || o.kind == kind {
			out = append(out, o)
		}
	}
	return out
}

// batchSizes are the sizes of the successful writes.
func (f *fakeDest) batchSizes() []int {
	var out []int
	for _, o := range f.calls("write") {
		if o.err == nil {
			out = append(out, len(o.ids))
		}
	}
	return out
}

// processed are the ids marked processed, in order, once per successful call.
func (f *fakeDest) processed() []int64 {
	var out []int64
	for _, o := range f.calls("processed") {
		if o.err == nil {
			out = append(out, o.ids...)
		}
	}
	return out
}

// harness runs one pipeline.
type harness struct {
	t       *testing.T
	dest    *fakeDest
	tracker *checkpoint.Tracker
	obs     *countingObserver
	in      chan pipeline.Item
	cancel  context.CancelFunc
	done    chan error
}

func newHarness(t *testing.T, opts pipeline.Options, start pglogrepl.LSN, chanCap int, configure func(*fakeDest)) *harness {
	t.Helper()
	if opts.Retry == (pipeline.Backoff{}) {
		opts.Retry = tinyRetry
	}
	h := &harness{t: t, tracker: checkpoint.NewTracker(start), obs: &countingObserver{},
		in: make(chan pipeline.Item, chanCap), done: make(chan error, 1)}
	h.dest = &fakeDest{tracker: h.tracker}
	if configure != nil {
		configure(h.dest)
	}
	h.run(pipeline.New(opts, h.dest, h.dest, h.tracker, h.obs, slog.New(slog.DiscardHandler)))
	return h
}

// run runs p on h's input until the test ends.
func (h *harness) run(p *pipeline.Pipeline) {
	t := h.t
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- p.Run(ctx, h.in) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(deadline):
			t.Errorf("Run did not return after its context was cancelled")
		}
	})
}

func rowItem(id int64) pipeline.Item {
	return pipeline.Item{Row: &sink.Row{ID: id, Pos: sink.Position{LSN: uint64(id)}}, Size: 1}
}

func sizedRow(id int64, size int) pipeline.Item {
	it := rowItem(id)
	it.Size = size
	return it
}

func commitItem(end pglogrepl.LSN) pipeline.Item { return pipeline.Item{CommitEnd: end} }

// rows returns items for ids from..to inclusive.
func rows(from, to int64) []pipeline.Item {
	var out []pipeline.Item
	for id := from; id <= to; id++ {
		out = append(out, rowItem(id))
	}
	return out
}

func ids(from, to int64) []int64 {
	var out []int64
	for id := from; id <= to; id++ {
		out = append(out, id)
	}
	return out
}

func items(groups ...[]pipeline.Item) []pipeline.Item { return slices.Concat(groups...) }

func (h *harness) send(its ...pipeline.Item) {
	h.t.Helper()
	for _, it := range its {
		select {
		case h.in <- it:
		case err := <-h.done:
			h.t.Fatalf("Run returned %v while items were being sent", err)
		case <-time.After(deadline):
			h.t.Fatalf("pipeline did not take item %+v", it)
		}
	}
}

// closeAndWait closes the input and returns Run's result.
func (h *harness) closeAndWait() error {
	h.t.Helper()
	close(h.in)
	return h.wait()
}

func (h *harness) wait() error {
	h.t.Helper()
	select {
	case err := <-h.done:
		h.done <- err // for the cleanup
		return err
	case <-time.After(deadline):
		h.t.Fatalf("Run did not return")
		return nil
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCut: batches are cut at batch.size rows, at the byte cap, after the
// flush interval, and when the input closes; rows keep their order.
func TestCut(t *testing.T) {
	hour := time.Hour
	tests := []struct {
		name  string
		opts  pipeline.Options
		items []pipeline.Item
		// before: batches that must be written before the input closes;
		// after: every batch written once Run returned.
		before, after []int
	}{
		{name: "size", opts: pipeline.Options{Size: 10, FlushInterval: hour},
			items: rows(1, 20), before: []int{10, 10}, after: []int{10, 10}},
		{name: "size, commits do not cut a non-empty batch", opts: pipeline.Options{Size: 10, FlushInterval: hour},
			items:  items(rows(1, 3), []pipeline.Item{commitItem(10)}, rows(4, 12), []pipeline.Item{commitItem(20)}, rows(13, 20)),
			before: []int{10, 10}, after: []int{10, 10}},
		{name: "size 1", opts: pipeline.Options{Size: 1, FlushInterval: hour},
			items: rows(1, 3), before: []int{1, 1, 1}, after: []int{1, 1, 1}},
		{name: "byte cap", opts: pipeline.Options{Size: 1000, MaxBytes: 100, FlushInterval: hour},
			items: []pipeline.Item{sizedRow(1, 30), sizedRow(2, 30), sizedRow(3, 30), sizedRow(4, 30), sizedRow(5, 30), sizedRow(6, 30), sizedRow(7, 30), sizedRow(8, 30), sizedRow(9, 30)},
			// Cut before the row that would take a batch past the cap.
			before: []int{3, 3}, after: []int{3, 3, 3}},
		{name: "byte cap, exactly full", opts: pipeline.Options{Size: 1000, MaxBytes: 100, FlushInterval: hour},
			items:  []pipeline.Item{sizedRow(1, 50), sizedRow(2, 50), sizedRow(3, 50)},
			before: []int{2}, after: []int{2, 1}},
		{name: "byte cap, one row over it", opts: pipeline.Options{Size: 1000, MaxBytes: 100, FlushInterval: hour},
			// The big row goes alone: the batch before it is cut first.
			items:  []pipeline.Item{sizedRow(1, 10), sizedRow(2, 500), sizedRow(3, 10)},
			before: []int{1, 1}, after: []int{1, 1, 1}},
		{name: "flush interval", opts: pipeline.Options{Size: 1000, FlushInterval: 20 * time.Millisecond},
			items: rows(1, 3), before: []int{3}, after: []int{3}},
		{name: "close flushes the partial batch", opts: pipeline.Options{Size: 10, FlushInterval: hour},
			items: rows(1, 25), before: []int{10, 10}, after: []int{10, 10, 5}},
		{name: "close with nothing buffered", opts: pipeline.Options{Size: 10, FlushInterval: hour},
			items: nil, before: nil, after: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.opts, 0, 0, nil)
			h.send(tt.items...)
			waitFor(t, fmt.Sprintf("batches %v", tt.before), func() bool { return len(h.dest.batchSizes()) >= len(tt.before) })
			if got := h.dest.batchSizes(); !slices.Equal(got, tt.before) {
				t.Fatalf("before close: batches %v, want %v", got, tt.before)
			}
			if err := h.closeAndWait(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := h.dest.batchSizes(); !slices.Equal(got, tt.after) {
				t.Errorf("batches %v, want %v", got, tt.after)
			}
			var want []int64
			for _, it := range tt.items {
				if it.Row != nil {
					want = append(want, it.Row.ID)
				}
			}
			if got := h.dest.processed(); !slices.Equal(got, want) {
				t.Errorf("processed %v, want %v", got, want)
			}
		})
	}
}

// TestMarkingNamesItsTransactions: every marking of a batch (processed and
// failed) carries the transactions its streamed rows come from, once each,
// in stream order; a transaction cut across batches is named by each of
// them, since each marks some of its rows (the marker waits until they are
// visible: checkpoint.Store). Rows read from a snapshot (xid 0) add none.
func TestMarkingNamesItsTransactions(t *testing.T) {
	// streamed returns rows from..to of transaction xid.
	streamed := func(xid uint32, from, to int64) []pipeline.Item {
		its := rows(from, to)
		for i := range its {
			its[i].Xid = xid
		}
		return its
	}
	tests := []struct {
		name   string
		size   int
		items  []pipeline.Item
		reject int64 // a row ClickHouse rejects (0: none)
		want   [][]uint32
	}{
		{name: "one transaction", size: 10, items: streamed(7, 1, 5), want: [][]uint32{{7}}},
		{name: "transactions in one batch", size: 10,
			items: items(streamed(7, 1, 3), []pipeline.Item{commitItem(10)}, streamed(9, 4, 6), []pipeline.Item{commitItem(20)}),
			want:  [][]uint32{{7, 9}}},
		{name: "cut after the first row of a transaction", size: 4,
			items: items(streamed(7, 1, 3), []pipeline.Item{commitItem(10)}, streamed(9, 4, 6), []pipeline.Item{commitItem(20)}),
			want:  [][]uint32{{7, 9}, {9}}},
		{name: "a transaction over three batches", size: 2,
			items: items(streamed(9, 1, 5), []pipeline.Item{commitItem(20)}),
			want:  [][]uint32{{9}, {9}, {9}}},
		{name: "rows from a snapshot", size: 10, items: rows(1, 5), want: [][]uint32{nil}},
		{name: "a rejected row's marking too", size: 10, items: streamed(7, 1, 5), reject: 3, want: [][]uint32{{7}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, pipeline.Options{Size: tt.size, FlushInterval: time.Hour}, 0, 0, func(f *fakeDest) {
				f.write = func(_ context.Context, ids []int64) (sink.Result, error) {
					res := sink.Result{Inserted: len(ids)}
					if slices.Contains(ids, tt.reject) {
						res.Inserted--
						res.Rejected = []sink.Rejected{{ID: tt.reject, Err: errors.New("bad row")}}
					}
					return res, nil
				}
			})
			h.send(tt.items...)
			if err := h.closeAndWait(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			var got [][]uint32
			for _, o := range h.dest.calls("processed") {
				got = append(got, o.xids)
			}
			if !slices.EqualFunc(got, tt.want, slices.Equal) {
				t.Errorf("markings name transactions %v, want %v", got, tt.want)
			}
			if tt.reject != 0 {
				failed := h.dest.calls("failed")
				if len(failed) != 1 || !slices.Equal(failed[0].xids, tt.want[0]) {
					t.Errorf("failed markings %v, want one naming %v", failed, tt.want[0])
				}
			}
		})
	}
}

// txn is a transaction fed to the pipeline: its rows, then (unless end is
// 0) its CommitEnd.
type txn struct {
	from, to int64
	end      pglogrepl.LSN
}

// allowed is the highest LSN the tracker may hold once the ids in done are
// delivered and marked: the end of the last transaction (in stream order)
// that is complete, whose rows are all in done, and every earlier one too.
func allowed(start pglogrepl.LSN, txns []txn, done map[int64]bool) pglogrepl.LSN {
	lsn := start
	for _, tx := range txns {
		if tx.end == 0 {
			break
		}
		for id := tx.from; id <= tx.to; id++ {
			if !done[id] {
				return lsn
			}
		}
		lsn = tx.end
	}
	return lsn
}

// TestDurableOnlyAfterWholeTransaction: a transaction spanning more than five
// batches becomes durable only when the batch holding its last row and its
// CommitEnd is delivered; before that the tracker stays at the previous
// commit (DESIGN §3.1). Durable is checked at every Write and MarkProcessed.
// A batch is marked while the next one is inserted, but the tracker moves
// strictly in order: when batch k is marked, batches before it (and only
// those) are durable.
func TestDurableOnlyAfterWholeTransaction(t *testing.T) {
	const start = 50
	tests := []struct {
		name string
		txns []txn
		// durableAtMark: the tracker at each MarkProcessed (the previous
		// batches delivered); final: after Run returned.
		durableAtMark []pglogrepl.LSN
		final         pglogrepl.LSN
	}{
		{
			// The big transaction's last row fills batch 6 exactly, so its
			// CommitEnd arrives with an empty buffer and goes alone.
			name:          "commit after a full batch",
			txns:          []txn{{1, 3, 100}, {4, 60, 200}, {61, 64, 0}},
			durableAtMark: []pglogrepl.LSN{start, 100, 100, 100, 100, 100, 200},
			final:         200,
		},
		{
			// The CommitEnd arrives mid-batch: batch 6 carries it.
			name:          "commit inside a batch",
			txns:          []txn{{1, 3, 100}, {4, 58, 200}, {59, 62, 0}},
			durableAtMark: []pglogrepl.LSN{start, 100, 100, 100, 100, 100, 200},
			final:         200,
		},
		{
			name:          "last transaction complete at close",
			txns:          []txn{{1, 3, 100}, {4, 58, 200}, {59, 62, 300}},
			durableAtMark: []pglogrepl.LSN{start, 100, 100, 100, 100, 100, 200},
			final:         300,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				mu      sync.Mutex
				done    = map[int64]bool{}
				highest pglogrepl.LSN
			)
			check := func(tracker *checkpoint.Tracker, where string) {
				mu.Lock()
				defer mu.Unlock()
				d := tracker.Durable()
				if lim := allowed(start, tt.txns, done); d > lim {
					t.Errorf("%s: durable %s, but only %s is fully delivered", where, d, lim)
				}
				if d < highest {
					t.Errorf("%s: durable went back from %s to %s", where, highest, d)
				}
				highest = d
			}
			h := newHarness(t, pipeline.Options{Size: 10, FlushInterval: time.Hour, Queue: 2}, start, 0, func(f *fakeDest) {
				f.write = func(_ context.Context, ids []int64) (sink.Result, error) {
					check(f.tracker, fmt.Sprintf("write %v", ids))
					return sink.Result{Inserted: len(ids)}, nil
				}
				f.markProcessed = func(_ context.Context, ids []int64) error {
					// Inserted but not yet marked: not delivered yet.
					check(f.tracker, fmt.Sprintf("mark %v", ids))
					mu.Lock()
					for _, id := range ids {
						done[id] = true
					}
					mu.Unlock()
					return nil
				}
			})
			for _, tx := range tt.txns {
				h.send(rows(tx.from, tx.to)...)
				if tx.end != 0 {
					h.send(commitItem(tx.end))
				}
			}
			if err := h.closeAndWait(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			check(h.tracker, "after Run")
			var got []pglogrepl.LSN
			for _, o := range h.dest.calls("processed") {
				got = append(got, o.durable)
			}
			if !slices.Equal(got, tt.durableAtMark) {
				t.Errorf("durable at each mark %v, want %v", got, tt.durableAtMark)
			}
			if d := h.tracker.Durable(); d != tt.final {
				t.Errorf("final durable %s, want %s", d, tt.final)
			}
			last := tt.txns[len(tt.txns)-1].to
			if got := h.dest.processed(); !slices.Equal(got, ids(1, last)) {
				t.Errorf("processed %v, want 1..%d once each", got, last)
			}
		})
	}
}

// TestCommitEndAlone: a CommitEnd with nothing buffered (a transaction with
// no outbox rows, or whose rows went out in earlier batches) advances the
// tracker without any write, and never moves it back.
func TestCommitEndAlone(t *testing.T) {
	h := newHarness(t, pipeline.Options{Size: 10, FlushInterval: time.Hour}, 10, 0, nil)
	h.send(commitItem(500))
	waitFor(t, "durable 500", func() bool { return h.tracker.Durable() == 500 })
	h.send(commitItem(400), commitItem(500))
	h.send(rowItem(1), commitItem(600))
	if err := h.closeAndWait(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := h.tracker.Durable(); d != 600 {
		t.Errorf("durable %s, want 600", d)
	}
	writes := h.dest.calls("write")
	if len(writes) != 1 || !slices.Equal(writes[0].ids, []int64{1}) || writes[0].durable != 500 {
		t.Errorf("writes %+v, want one write [1] made at durable 500", writes)
	}
}

// TestRejectedRows: rows the writer rejects are marked failed, with their
// error, before the next batch is written, and are not marked processed.
func TestRejectedRows(t *testing.T) {
	reject := map[int64]bool{2: true, 7: true, 9: true, 10: true, 11: true, 12: true}
	h := newHarness(t, pipeline.Options{Size: 4, FlushInterval: time.Hour}, 0, 0, func(f *fakeDest) {
		f.write = func(_ context.Context, ids []int64) (sink.Result, error) {
			var res sink.Result
			for _, id := range ids {
				if reject[id] {
					res.Rejected = append(res.Rejected, sink.Rejected{ID: id, Err: fmt.Errorf("bad row %d", id)})
				} else {
					res.Inserted++
				}
			}
			return res, nil
		}
	})
	h.send(rows(1, 12)...)
	h.send(commitItem(100))
	h.send(rows(13, 14)...)
	if err := h.closeAndWait(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Marking processed may overlap the next insert; marking failed may not.
	var inserts, processed []string
	for _, o := range h.dest.calls("") {
		if o.kind == "processed" {
			processed = append(processed, o.String())
		} else {
			inserts = append(inserts, o.String())
		}
	}
	wantInserts := []string{
		"write[1 2 3 4]", "failed[2]",
		"write[5 6 7 8]", "failed[7]",
		"write[9 10 11 12]", "failed[9 10 11 12]", // nothing left to mark processed
		"write[13 14]",
	}
	wantProcessed := []string{"processed[1 3 4]", "processed[5 6 8]", "processed[13 14]"}
	if !slices.Equal(inserts, wantInserts) || !slices.Equal(processed, wantProcessed) {
		t.Errorf("calls\n got %v then %v\nwant %v then %v", inserts, processed, wantInserts, wantProcessed)
	}
	for _, o := range h.dest.calls("failed") {
		for i, id := range o.ids {
			if w := fmt.Sprintf("bad row %d", id); o.errs[i] != w {
				t.Errorf("row %d marked failed with %q, want %q", id, o.errs[i], w)
			}
		}
	}
	if d := h.tracker.Durable(); d != 100 {
		t.Errorf("durable %s, want 100: rejected rows must not hold the stream", d)
	}
	if got := h.obs.rejected.Load(); got != 6 {
		t.Errorf("%d rows reported rejected, want 6", got)
	}
}

// TestRetries: failed inserts and marks are retried with backoff; an insert
// is retried as a whole, and rows are marked processed once.
func TestRetries(t *testing.T) {
	tests := []struct {
		name                                   string
		writeFails, markFails, markFailedFails int // failures before success, on the first batch
		wantWrites                             int
	}{
		{name: "insert fails twice", writeFails: 2, wantWrites: 3 + 1},
		{name: "mark processed fails twice", markFails: 2, wantWrites: 1 + 1},
		{name: "mark failed fails once", markFailedFails: 1, wantWrites: 1 + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var writes, marks, faileds atomic.Int32
			h := newHarness(t, pipeline.Options{Size: 3, FlushInterval: time.Hour}, 0, 0, func(f *fakeDest) {
				f.write = func(_ context.Context, ids []int64) (sink.Result, error) {
					if int(writes.Add(1)) <= tt.writeFails {
						return sink.Result{}, errors.New("clickhouse: connection refused")
					}
					res := sink.Result{Inserted: len(ids)}
					if ids[0] == 1 {
						res.Inserted--
						res.Rejected = []sink.Rejected{{ID: 2, Err: errors.New("bad")}}
					}
					return res, nil
				}
				f.markProcessed = func(context.Context, []int64) error {
					if int(marks.Add(1)) <= tt.markFails {
						return errors.New("postgres: connection reset")
					}
					return nil
				}
				f.markFailed = func(context.Context, []checkpoint.Failure) error {
					if int(faileds.Add(1)) <= tt.markFailedFails {
						return errors.New("postgres: connection reset")
					}
					return nil
				}
			})
			h.send(rows(1, 3)...)
			h.send(commitItem(100))
			h.send(rows(4, 6)...)
			h.send(commitItem(200))
			if err := h.closeAndWait(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			ws := h.dest.calls("write")
			if len(ws) != tt.wantWrites {
				t.Fatalf("%d writes %v, want %d", len(ws), ws, tt.wantWrites)
			}
			for i, w := range ws[:len(ws)-1] {
				if !slices.Equal(w.ids, []int64{1, 2, 3}) {
					t.Errorf("attempt %d wrote %v, want the whole first batch", i+1, w.ids)
				}
			}
			if got, want := h.dest.processed(), []int64{1, 3, 4, 5, 6}; !slices.Equal(got, want) {
				t.Errorf("marked processed %v, want %v once each", got, want)
			}
			var failed []int64
			for _, o := range h.dest.calls("failed") {
				if o.err == nil {
					failed = append(failed, o.ids...)
				}
			}
			if !slices.Equal(failed, []int64{2}) {
				t.Errorf("marked failed %v, want [2] once", failed)
			}
			if d := h.tracker.Durable(); d != 200 {
				t.Errorf("durable %s, want 200", d)
			}
			if got := h.obs.insertFailed.Load(); got != int64(tt.writeFails) {
				t.Errorf("%d failed inserts reported, want %d", got, tt.writeFails)
			}
		})
	}
}

// TestCloseFlushesEverything: closing the input delivers every row received
// and Run returns nil; the tracker reaches the last complete transaction.
func TestCloseFlushesEverything(t *testing.T) {
	tests := []struct {
		name  string
		opts  pipeline.Options
		txns  []txn
		final pglogrepl.LSN
	}{
		{name: "last transaction complete", opts: pipeline.Options{Size: 10, FlushInterval: time.Hour},
			txns: []txn{{1, 12, 100}, {13, 25, 200}}, final: 200},
		{name: "last transaction incomplete", opts: pipeline.Options{Size: 10, FlushInterval: time.Hour},
			txns: []txn{{1, 12, 100}, {13, 25, 0}}, final: 100},
		{name: "queue of one", opts: pipeline.Options{Size: 2, FlushInterval: time.Hour, Queue: 1},
			txns: []txn{{1, 1, 100}, {2, 2, 200}, {3, 9, 300}}, final: 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.opts, 0, 0, nil)
			for _, tx := range tt.txns {
				h.send(rows(tx.from, tx.to)...)
				if tx.end != 0 {
					h.send(commitItem(tx.end))
				}
			}
			// The close must find the batcher idle, waiting for input with
			// rows buffered (its burst is over once every row is reported
			// received): a close taken in the middle of a burst is another
			// path, and this test is the guard of the idle one.
			sent := int64(tt.txns[len(tt.txns)-1].to)
			waitFor(t, "the batcher to take every row", func() bool { return h.obs.received.Load() == sent })
			if err := h.closeAndWait(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			last := tt.txns[len(tt.txns)-1].to
			if got := h.dest.processed(); !slices.Equal(got, ids(1, last)) {
				t.Errorf("processed %v, want 1..%d once each", got, last)
			}
			if d := h.tracker.Durable(); d != tt.final {
				t.Errorf("durable %s, want %s", d, tt.final)
			}
		})
	}
}

// blockingWrite blocks every Write until release is closed or ctx ends,
// counting the calls in started.
func blockingWrite(release <-chan struct{}, started *atomic.Int32) func(context.Context, []int64) (sink.Result, error) {
	return func(ctx context.Context, ids []int64) (sink.Result, error) {
		started.Add(1)
		select {
		case <-release:
			return sink.Result{Inserted: len(ids)}, nil
		case <-ctx.Done():
			return sink.Result{}, ctx.Err()
		}
	}
}

// TestCancel: cancelling the context makes Run return promptly with the
// context's error, and rows not delivered are not durable.
func TestCancel(t *testing.T) {
	tests := []struct {
		name  string
		queue int
		// items fed before cancelling; the writer is stuck in its first Write.
		items []pipeline.Item
	}{
		{name: "batcher idle", queue: 2,
			items: items(rows(1, 5), []pipeline.Item{commitItem(100)})},
		{name: "batcher waiting on a full queue", queue: 1,
			items: items(rows(1, 14), []pipeline.Item{commitItem(100)}, rows(15, 15))},
		{name: "batcher waiting to hand a batch over", queue: 0,
			items: items(rows(1, 9), []pipeline.Item{commitItem(100)}, rows(10, 10))},
		{name: "rows buffered", queue: 2,
			items: items(rows(1, 5), []pipeline.Item{commitItem(100)}, rows(6, 8))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The batcher and the writer both see the cancellation; repeat
			// so every interleaving gets its chance.
			for i := 0; i < 50; i++ {
				var started atomic.Int32
				release := make(chan struct{})
				h := newHarness(t, pipeline.Options{Size: 5, FlushInterval: time.Hour, Queue: tt.queue}, 10, 0, func(f *fakeDest) {
					f.write = blockingWrite(release, &started)
				})
				h.send(tt.items...)
				waitFor(t, "the first write", func() bool { return started.Load() == 1 })
				h.cancel()
				if err := h.wait(); !errors.Is(err, context.Canceled) {
					t.Fatalf("run %d: Run returned %v, want context.Canceled", i, err)
				}
				if d := h.tracker.Durable(); d != 10 {
					t.Fatalf("run %d: durable %s after cancel, want the start 10", i, d)
				}
				if p := h.dest.processed(); len(p) != 0 {
					t.Fatalf("run %d: marked %v processed although nothing was inserted", i, p)
				}
				close(release)
			}
		})
	}
}

// TestBoundedMemory: with the writer stuck, the pipeline holds the batch
// being written, Queue batches waiting and one full batch it cannot queue:
// the producer is blocked after (Queue+2)·Size rows plus what the input
// channel buffers (DESIGN §3.5).
func TestBoundedMemory(t *testing.T) {
	const size = 10
	tests := []struct {
		queue, chanCap int
	}{
		{queue: 0, chanCap: 0},
		{queue: 1, chanCap: 0},
		{queue: 2, chanCap: 0},
		{queue: 4, chanCap: 0},
		{queue: 2, chanCap: 7},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("queue %d, channel %d", tt.queue, tt.chanCap), func(t *testing.T) {
			var started atomic.Int32
			release := make(chan struct{})
			h := newHarness(t, pipeline.Options{Size: size, FlushInterval: time.Hour, Queue: tt.queue}, 0, tt.chanCap, func(f *fakeDest) {
				f.write = blockingWrite(release, &started)
			})
			limit := int64((tt.queue+2)*size + tt.chanCap)
			total := 3 * limit
			var accepted atomic.Int64
			producerDone := make(chan struct{})
			go func() {
				defer close(producerDone)
				// Rows only until the end: a CommitEnd arriving with an
				// empty buffer would queue an empty batch of its own.
				for id := int64(1); id <= total; id++ {
					h.in <- rowItem(id)
					accepted.Add(1)
				}
				h.in <- commitItem(pglogrepl.LSN(total))
				close(h.in)
			}()
			waitFor(t, fmt.Sprintf("%d rows accepted", limit), func() bool { return accepted.Load() >= limit })
			// Give an unbounded pipeline every chance to take more.
			for i := 0; i < 20; i++ {
				time.Sleep(5 * time.Millisecond)
				if n := accepted.Load(); n > limit {
					t.Fatalf("producer got %d rows in with the writer stuck, want at most %d", n, limit)
				}
			}
			if n := started.Load(); n != 1 {
				t.Errorf("%d writes started, want 1 (stuck)", n)
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
			if got := h.dest.processed(); !slices.Equal(got, ids(1, total)) {
				t.Errorf("processed %d rows, want 1..%d in order", len(got), total)
			}
			if d := h.tracker.Durable(); d != pglogrepl.LSN(total) {
				t.Errorf("durable %s, want %s", d, pglogrepl.LSN(total))
			}
		})
	}
}

// TestDurableWhileIdle: the last batch becomes durable once it is marked,
// without waiting for more input (an idle outbox must still confirm it).
func TestDurableWhileIdle(t *testing.T) {
	h := newHarness(t, pipeline.Options{Size: 10, FlushInterval: 10 * time.Millisecond}, 1, 0, nil)
	h.send(rows(1, 3)...)
	h.send(commitItem(100))
	waitFor(t, "durable 100 with no further input", func() bool { return h.tracker.Durable() == 100 })
	h.send(rows(4, 25)...) // two full batches and a partial one
	h.send(commitItem(200))
	waitFor(t, "durable 200 with no further input", func() bool { return h.tracker.Durable() == 200 })
	if got := h.dest.processed(); !slices.Equal(got, ids(1, 25)) {
		t.Errorf("processed %v, want 1..25", got)
	}
}

// TestPositionBatchDoesNotWaitForMarking: a batch that carries only a
// position (the commit that ends right after a full batch) neither holds
// the next insert back behind the marking in flight nor becomes durable
// before that marking completes.
func TestPositionBatchDoesNotWaitForMarking(t *testing.T) {
	release := make(chan struct{})
	var marks atomic.Int32
	h := newHarness(t, pipeline.Options{Size: 5, FlushInterval: time.Hour, Queue: 1}, 1, 0, func(f *fakeDest) {
		f.markProcessed = func(ctx context.Context, ids []int64) error {
			if marks.Add(1) == 1 {
				select { // the first marking waits until the second batch is inserted
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		}
	})
	h.send(rows(1, 5)...) // a full batch; its transaction ends right after it
	h.send(commitItem(100))
	h.send(rows(6, 10)...)
	h.send(commitItem(200))
	waitFor(t, "the second batch inserted while the first is being marked", func() bool {
		return len(h.dest.calls("write")) == 2
	})
	if d := h.tracker.Durable(); d != 1 {
		t.Fatalf("durable %d while the first batch is still being marked, want 1", d)
	}
	close(release)
	waitFor(t, "durable 200", func() bool { return h.tracker.Durable() == 200 })
	if got := h.dest.processed(); !slices.Equal(got, ids(1, 10)) {
		t.Errorf("processed %v, want 1..10", got)
	}
}

// A batch is durable as soon as it is marked, not when the next insert
// succeeds: during a ClickHouse outage the slot must not keep the WAL of a
// batch that is already delivered.
func TestDurableWhenMarkedWhileNextInsertWaits(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	var started atomic.Int32
	h := newHarness(t, pipeline.Options{Size: 5, FlushInterval: time.Hour, Queue: 1}, 1, 0, func(f *fakeDest) {
		first := true
		block := blockingWrite(release, &started)
		f.write = func(ctx context.Context, ids []int64) (sink.Result, error) {
			if first {
				first = false
				return sink.Result{Inserted: len(ids)}, nil
			}
			return block(ctx, ids) // ClickHouse goes away after the first batch
		}
		// The marking ends after the writer has taken the next batch.
		f.markProcessed = func(ctx context.Context, ids []int64) error {
			time.Sleep(100 * time.Millisecond)
			return nil
		}
	})
	h.send(rows(1, 5)...)
	h.send(commitItem(100))
	h.send(rows(6, 10)...)
	h.send(commitItem(200))
	waitFor(t, "the second insert under way", func() bool { return started.Load() == 1 })
	waitFor(t, "the first batch durable while the second insert waits", func() bool { return h.tracker.Durable() == 100 })
}
