package pipeline_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/pipeline"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// appendDest is a fakeDest that can also keep an INSERT open
// (pipeline.Appender) and mark in an open transaction
// (pipeline.MarkingStarter). It records "append" and "commit" calls, and
// the markings committed in a transaction as "premarked".
type appendDest struct {
	*fakeDest
	appendable func(rows []sink.Row) bool
	append     func(n int, ids []int64) ([]sink.Rejected, error) // n: the call's number, from 1
	commit     func() error
	premark    func(ids []int64) error // a statement inside the open transaction
	noPremark  bool                    // not a MarkingStarter's behaviour: BeginMarking fails

	mu      sync.Mutex
	appends int
	pending []int64 // appended, not committed
	stored  []int64 // committed
}

func (d *appendDest) Appendable(rows []sink.Row) bool {
	return d.appendable == nil || d.appendable(rows)
}

func (d *appendDest) Append(ctx context.Context, rows []sink.Row) ([]sink.Rejected, error) {
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	d.mu.Lock()
	d.appends++
	n := d.appends
	d.mu.Unlock()
	var rejected []sink.Rejected
	var err error
	if d.append != nil {
		rejected, err = d.append(n, ids)
	}
	d.record(op{kind: "append", ids: ids, durable: d.tracker.Durable(), err: err})
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	for _, id := range ids {
		if !slices.ContainsFunc(rejected, func(r sink.Rejected) bool { return r.ID == id }) {
			d.pending = append(d.pending, id)
		}
	}
	d.mu.Unlock()
	return rejected, nil
}

func (d *appendDest) Commit(ctx context.Context) error {
	var err error
	if d.commit != nil {
		err = d.commit()
	}
	d.mu.Lock()
	o := op{kind: "commit", ids: slices.Clone(d.pending), durable: d.tracker.Durable(), err: err}
	if err == nil {
		d.stored = append(d.stored, d.pending...)
	}
	d.pending = nil
	d.mu.Unlock()
	d.record(o)
	return err
}

func (d *appendDest) Abandon() {
	d.mu.Lock()
	o := op{kind: "abandon", ids: slices.Clone(d.pending)}
	d.pending = nil
	d.mu.Unlock()
	d.record(o)
}

func (d *appendDest) BeginMarking(ctx context.Context) (pipeline.OpenMarking, error) {
	if d.noPremark {
		return nil, errors.New("no transaction")
	}
	return &fakeMarking{d: d}, nil
}

// fakeMarking records its statements; they count as marked ("premarked")
// only at Commit.
type fakeMarking struct {
	d    *appendDest
	ids  []int64
	done bool
}

func (m *fakeMarking) MarkProcessed(ctx context.Context, ids []int64, xids []uint32) error {
	if m.d.premark != nil {
		if err := m.d.premark(ids); err != nil {
			return err
		}
	}
	m.ids = append(m.ids, ids...)
	return nil
}

func (m *fakeMarking) Commit(ctx context.Context) error {
	m.done = true
	m.d.record(op{kind: "premarked", ids: slices.Clone(m.ids), durable: m.d.tracker.Durable()})
	return nil
}

func (m *fakeMarking) Rollback(ctx context.Context) error {
	if !m.done {
		m.d.record(op{kind: "rollback", ids: slices.Clone(m.ids)})
	}
	m.done = true
	return nil
}

// marked are the ids marked processed, by either way, in order.
func (d *appendDest) marked() []int64 {
	var out []int64
	for _, o := range d.calls("") {
		if (o.kind == "processed" || o.kind == "premarked") && o.err == nil {
			out = append(out, o.ids...)
		}
	}
	return out
}

type appendHarness struct {
	*harness
	dest *appendDest
}

func newAppendHarness(t *testing.T, opts pipeline.Options, start pglogrepl.LSN, configure func(*appendDest)) *appendHarness {
	t.Helper()
	opts.Append = true
	if opts.Retry == (pipeline.Backoff{}) {
		opts.Retry = tinyRetry
	}
	h := &harness{t: t, tracker: checkpoint.NewTracker(start), obs: &countingObserver{},
		in: make(chan pipeline.Item, 1024), done: make(chan error, 1)}
	d := &appendDest{fakeDest: &fakeDest{tracker: checkpoint.NewTracker(0)}}
	d.tracker = h.tracker
	h.dest = d.fakeDest
	if configure != nil {
		configure(d)
	}
	h.run(pipeline.New(opts, d, d, h.tracker, h.obs, slog.New(slog.DiscardHandler)))
	return &appendHarness{harness: h, dest: d}
}

// txns returns n transactions of per rows each, ids from 1, each followed
// by its commit at LSN 100 × its number.
func txns(n, per int) []pipeline.Item {
	var out []pipeline.Item
	for i := range n {
		out = append(out, rows(int64(i*per+1), int64((i+1)*per))...)
		out = append(out, commitItem(pglogrepl.LSN(100*(i+1))))
	}
	return out
}

// gate makes a backlog span several batches: the first append waits until
// the rest of the backlog is sent (sendBacklog).
type gate struct {
	entered, release chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan struct{}), release: make(chan struct{})} }

// append is an append hook: the first call waits for the release.
func (g *gate) append(n int, ids []int64) ([]sink.Rejected, error) {
	if n == 1 {
		close(g.entered)
		<-g.release
	}
	return nil, nil
}

// sendBacklog sends the first transaction of its, waits until it is being
// appended, sends the rest and lets the append go on.
func (g *gate) sendBacklog(h *appendHarness, its []pipeline.Item) {
	h.t.Helper()
	end := slices.IndexFunc(its, func(it pipeline.Item) bool { return it.Row == nil }) + 1
	h.send(its[:end]...)
	select {
	case <-g.entered:
	case <-time.After(deadline):
		h.t.Fatal("the first batch was not appended")
	}
	h.send(its[end:]...)
	close(g.release)
}

// A backlog goes into one INSERT kept open across its batches; nothing of it
// is marked, nor durable, before that INSERT is committed, and then every
// row is marked once.
func TestAppendBacklogIsOneInsert(t *testing.T) {
	g := newGate()
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 10, MaxRows: 10_000, FlushInterval: time.Hour}, time.Minute), 1, func(d *appendDest) {
		d.append = g.append
	})
	g.sendBacklog(h, txns(30, 10)) // 300 rows, all at once: a backlog
	if err := h.closeAndWait(); err != nil {
		t.Fatal(err)
	}
	commits := h.dest.calls("commit")
	if len(commits) != 1 || !slices.Equal(commits[0].ids, ids(1, 300)) {
		t.Fatalf("commits %v, want one of rows 1..300", commits)
	}
	if n := len(h.dest.calls("append")); n < 2 {
		t.Errorf("%d appends: the backlog went in one batch, the test proves nothing", n)
	}
	for _, o := range h.dest.calls("") {
		if o.kind == "commit" {
			break
		}
		if o.kind == "processed" || o.kind == "premarked" || o.kind == "failed" {
			t.Errorf("%v before the INSERT was committed", o)
		}
		if o.durable != 1 {
			t.Errorf("durable %d at %v, before the INSERT was committed", o.durable, o)
		}
	}
	if got := h.dest.marked(); !slices.Equal(got, ids(1, 300)) {
		t.Errorf("marked %v, want 1..300 once each", got)
	}
	if len(h.dest.calls("write")) != 0 {
		t.Errorf("writes %v: every batch was appendable", h.dest.calls("write"))
	}
	if d := h.tracker.Durable(); d != 3000 {
		t.Errorf("durable %d, want 3000", d)
	}
}

// An INSERT carries at most MaxRows rows: the open one is committed before
// a batch that would take it past that.
func TestAppendCommitsAtMaxRows(t *testing.T) {
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 10, MaxRows: 100, FlushInterval: time.Hour}, time.Minute), 1, nil)
	h.send(txns(30, 10)...)
	if err := h.closeAndWait(); err != nil {
		t.Fatal(err)
	}
	commits := h.dest.calls("commit")
	if len(commits) < 3 {
		t.Fatalf("%d commits %v, want 3 or more", len(commits), commits)
	}
	for _, c := range commits {
		if len(c.ids) > 100 {
			t.Errorf("commit of %d rows, want at most 100", len(c.ids))
		}
	}
}

// A live stream (batches that fill slower than linger) keeps no INSERT
// open: each batch is inserted on its own, visible at once, and retried in
// place if that fails; so is a partial batch.
func TestLiveStreamIsNotAppended(t *testing.T) {
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 5, FlushInterval: 50 * time.Millisecond}, 5*time.Millisecond), 1, nil)
	for i := range 3 {
		for id := int64(i*5 + 1); id <= int64(i*5+5); id++ {
			h.send(rowItem(id))
			time.Sleep(3 * time.Millisecond) // 5 rows take 12 ms or more: slower than linger
		}
		h.send(commitItem(pglogrepl.LSN(100 * (i + 1))))
		want := pglogrepl.LSN(100 * (i + 1))
		waitFor(t, "the batch inserted and durable with the input open", func() bool { return h.tracker.Durable() == want })
	}
	h.send(rows(16, 17)...) // a partial batch, due after the flush interval
	h.send(commitItem(400))
	waitFor(t, "the partial batch durable", func() bool { return h.tracker.Durable() == 400 })
	if n := len(h.dest.calls("append")); n != 0 {
		t.Errorf("%d appends, want none", n)
	}
	if got := h.dest.batchSizes(); !slices.Equal(got, []int{5, 5, 5, 2}) {
		t.Errorf("inserts of %v rows, want 5 5 5 2", got)
	}
}

// The tail of a backlog, a partial batch, goes into the open INSERT once
// no row came for linger, and the INSERT is committed then: not after the
// flush interval, with the input still open.
func TestAppendTailIsCutWhenQuiet(t *testing.T) {
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 100, MaxRows: 10_000, FlushInterval: time.Hour}, 20*time.Millisecond), 1, nil)
	h.send(txns(25, 10)...) // 250 rows: two full batches and a partial one
	waitFor(t, "the backlog durable with the input open", func() bool { return h.tracker.Durable() == 2500 })
	commits := h.dest.calls("commit")
	if len(commits) != 1 || len(commits[0].ids) != 250 {
		t.Errorf("commits %v, want one of 250 rows", commits)
	}
}

// The tail of a backlog is cut after linger even when it came before the
// writer opened the INSERT (its first append was slow): it is not left
// waiting for the flush interval once the INSERT is committed.
func TestAppendTailIsCutWhenTheInsertOpensLate(t *testing.T) {
	g := newGate()
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 100, MaxRows: 10_000, FlushInterval: time.Hour}, 50*time.Millisecond), 1, func(d *appendDest) {
		d.append = g.append
	})
	its := txns(15, 10)
	h.send(its[:110]...) // 100 rows: the first batch, a backlog's
	select {
	case <-g.entered:
	case <-time.After(deadline):
		t.Fatal("the first batch was not appended")
	}
	h.send(its[110:]...)               // the tail: 50 rows
	time.Sleep(100 * time.Millisecond) // the batcher holds the tail, the INSERT not open yet
	close(g.release)
	waitFor(t, "the backlog durable with the input open", func() bool { return h.tracker.Durable() == 1500 })
	commits := h.dest.calls("commit")
	if len(commits) != 1 || len(commits[0].ids) != 150 {
		t.Errorf("commits %v, want one of 150 rows", commits)
	}
}

// A pipeline that stops on an error with an INSERT open (here the marking
// of an earlier batch failed for good: its lease was lost) abandons that
// INSERT, so that it does not go on running on the server, where a
// successor's recovery would wait for it. Nothing of it is committed or
// marked.
func TestStopWithInsertOpenAbandonsIt(t *testing.T) {
	lost := permanentError{errors.New("lease lost")}
	markingFails := make(chan struct{})
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 10, MaxRows: 10_000, FlushInterval: time.Hour}, time.Minute), 1, func(d *appendDest) {
		d.appendable = func(rows []sink.Row) bool { return rows[0].ID != 1 } // the first batch is inserted on its own
		d.markProcessed = func(ctx context.Context, ids []int64) error {
			<-markingFails
			return lost
		}
	})
	its := txns(30, 10)
	h.send(its[:11]...)
	waitFor(t, "the first batch inserted", func() bool { return len(h.dest.calls("write")) > 0 })
	h.send(its[11:]...)
	waitFor(t, "an INSERT open", func() bool { return len(h.dest.calls("append")) > 0 })
	close(markingFails)
	if err := h.wait(); !errors.Is(err, lost) {
		t.Fatalf("Run: %v, want the marking's error", err)
	}
	var appended []int64
	for _, o := range h.dest.calls("append") {
		appended = append(appended, o.ids...)
	}
	abandoned := h.dest.calls("abandon")
	if len(abandoned) != 1 || !slices.Equal(abandoned[0].ids, appended) {
		t.Errorf("abandoned %v, want the open INSERT (%d rows) once", abandoned, len(appended))
	}
	if c := h.dest.calls("commit"); len(c) != 0 {
		t.Errorf("commits %v, want none", c)
	}
	if m := h.dest.marked(); len(m) != 0 {
		t.Errorf("rows %v marked, want none", m)
	}
	if d := h.tracker.Durable(); d != 1 {
		t.Errorf("durable %v, want the start", d)
	}
}

// permanentError is an error no retry will mend (a lost lease).
type permanentError struct{ error }

func (permanentError) Permanent() bool { return true }

// An Append or Commit that fails ends the pipeline with pipeline.ErrResend:
// the rows sent are gone, so nothing of the open INSERT is marked (its
// markings are rolled back) and nothing becomes durable; the rows must come
// again from the slot.
func TestAppendFailureEndsWithErrResend(t *testing.T) {
	boom := errors.New("connection reset")
	tests := []struct {
		name      string
		configure func(*appendDest, *gate)
	}{
		{"append", func(d *appendDest, g *gate) {
			d.append = func(n int, ids []int64) ([]sink.Rejected, error) {
				if n == 2 {
					return nil, boom
				}
				return g.append(n, ids)
			}
		}},
		{"commit", func(d *appendDest, g *gate) {
			d.append = g.append
			d.commit = func() error { return boom }
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGate()
			h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 10, MaxRows: 10_000, FlushInterval: time.Hour}, time.Minute), 1, func(d *appendDest) {
				tt.configure(d, g)
			})
			g.sendBacklog(h, txns(30, 10))
			close(h.in)
			err := h.wait()
			if !errors.Is(err, pipeline.ErrResend) || !errors.Is(err, boom) {
				t.Fatalf("Run: %v, want ErrResend wrapping the failure", err)
			}
			if got := h.dest.marked(); len(got) != 0 {
				t.Errorf("marked %v, want nothing", got)
			}
			if d := h.tracker.Durable(); d != 1 {
				t.Errorf("durable %d, want 1 (where it started)", d)
			}
			if len(h.dest.calls("rollback")) != 1 {
				t.Errorf("rollbacks %v, want the open INSERT's markings rolled back", h.dest.calls("rollback"))
			}
		})
	}
}

// When the markings done while the INSERT was open fail, its rows are
// marked again after the commit, the usual way.
func TestAppendMarkingFailureMarksAgain(t *testing.T) {
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 10, MaxRows: 10_000, FlushInterval: time.Hour}, time.Minute), 1, func(d *appendDest) {
		d.premark = func(ids []int64) error { return errors.New("connection lost") }
	})
	h.send(txns(5, 10)...)
	if err := h.closeAndWait(); err != nil {
		t.Fatal(err)
	}
	if got := h.dest.processed(); !slices.Equal(got, ids(1, 50)) {
		t.Errorf("marked again %v, want 1..50", got)
	}
	if len(h.dest.calls("premarked")) != 0 {
		t.Errorf("the failed markings were committed: %v", h.dest.calls("premarked"))
	}
	if d := h.tracker.Durable(); d != 500 {
		t.Errorf("durable %d, want 500", d)
	}
}

// Rows the sink rejects while appending are marked failed, the others
// processed, after the commit.
func TestAppendRejectedRows(t *testing.T) {
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 10, MaxRows: 10_000, FlushInterval: time.Hour}, time.Minute), 1, func(d *appendDest) {
		d.append = func(n int, ids []int64) ([]sink.Rejected, error) {
			var out []sink.Rejected
			for _, id := range ids {
				if id%7 == 0 {
					out = append(out, sink.Rejected{ID: id, Err: errors.New("does not fit")})
				}
			}
			return out, nil
		}
	})
	h.send(txns(3, 10)...)
	if err := h.closeAndWait(); err != nil {
		t.Fatal(err)
	}
	var failed []int64
	for _, o := range h.dest.calls("failed") {
		failed = append(failed, o.ids...)
	}
	if !slices.Equal(failed, []int64{7, 14, 21, 28}) {
		t.Errorf("failed %v, want 7 14 21 28", failed)
	}
	want := slices.DeleteFunc(ids(1, 30), func(id int64) bool { return id%7 == 0 })
	if got := h.dest.marked(); !slices.Equal(got, want) {
		t.Errorf("processed %v, want %v", got, want)
	}
}

// Rows the sink must check by id (a restart's recovery window) are not
// appended: they go through Write, which can check and retry them; the
// rows after them are appended.
func TestNotAppendableRowsAreWritten(t *testing.T) {
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 10, MaxRows: 10_000, FlushInterval: time.Hour}, time.Minute), 1, func(d *appendDest) {
		d.appendable = func(rows []sink.Row) bool { return rows[0].ID > 20 }
	})
	all := txns(5, 10)
	h.send(all[:22]...) // rows 1..20 and their commits
	waitFor(t, "rows 1..20 written", func() bool { return len(h.dest.processed()) == 20 })
	h.send(all[22:]...)
	if err := h.closeAndWait(); err != nil {
		t.Fatal(err)
	}
	var written, appended []int64
	for _, o := range h.dest.calls("write") {
		written = append(written, o.ids...)
	}
	for _, o := range h.dest.calls("append") {
		appended = append(appended, o.ids...)
	}
	if !slices.Equal(written, ids(1, 20)) || !slices.Equal(appended, ids(21, 50)) {
		t.Errorf("written %v and appended %v, want 1..20 and 21..50", written, appended)
	}
	if got := h.dest.marked(); !slices.Equal(got, ids(1, 50)) {
		t.Errorf("marked %v, want 1..50", got)
	}
}

// A live stream whose writer was slow once fills a batch past batch.size,
// but at its own slow rate: that is not a backlog, and the batch is
// inserted on its own, not into an INSERT left open waiting for more.
func TestGrownLiveBatchIsNotAppended(t *testing.T) {
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 5, MaxRows: 1000, FlushInterval: time.Hour}, 5*time.Millisecond), 1, func(d *appendDest) {
		first := true
		d.write = func(ctx context.Context, ids []int64) (sink.Result, error) {
			if first { // ClickHouse slow once: the next batch grows meanwhile
				first = false
				time.Sleep(100 * time.Millisecond)
			}
			return sink.Result{Inserted: len(ids)}, nil
		}
	})
	for id := int64(1); id <= 30; id++ {
		h.send(rowItem(id))
		h.send(commitItem(pglogrepl.LSN(100 * id)))
		time.Sleep(4 * time.Millisecond) // 250 rows/s: below 5 rows per 5 ms
	}
	waitFor(t, "every row durable", func() bool { return h.tracker.Durable() >= 2500 })
	if n := len(h.dest.calls("append")); n != 0 {
		t.Errorf("%d appends, want none: a slow stream's grown batch is not a backlog's", n)
	}
	if sizes := h.dest.batchSizes(); !slices.ContainsFunc(sizes, func(n int) bool { return n > 5 }) {
		t.Errorf("inserts of %v rows: no batch grew while the writer was slow, the test proves nothing", sizes)
	}
}

// Rows the stream is catching up on (Item.CatchUp: in the WAL before the
// stream began) are a backlog however slowly they come, as at start-up
// while the walsender warms up: they go into an INSERT kept open.
func TestCatchUpRowsAreAppended(t *testing.T) {
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 5, MaxRows: 1000, FlushInterval: time.Hour}, 5*time.Millisecond), 1, nil)
	for id := int64(1); id <= 20; id++ {
		it := rowItem(id)
		it.CatchUp = true
		h.send(it)
		if id%5 == 0 {
			h.send(commitItem(pglogrepl.LSN(100 * id)))
		}
		time.Sleep(2 * time.Millisecond) // 500 rows/s: slower than 5 rows per 5 ms
	}
	if err := h.closeAndWait(); err != nil {
		t.Fatal(err)
	}
	if len(h.dest.calls("append")) == 0 || len(h.dest.calls("write")) != 0 {
		t.Errorf("appends %d, writes %d: catch-up rows were not appended", len(h.dest.calls("append")), len(h.dest.calls("write")))
	}
	if got := h.dest.marked(); !slices.Equal(got, ids(1, 20)) {
		t.Errorf("marked %v, want 1..20", got)
	}
}

// A pause in the middle of rows the stream is catching up on (a stall of
// the walsender or of this machine) does not end the open INSERT: the
// partial batch the pause cut goes into it, and the rows after the pause
// join it, so one backlog stays one INSERT.
func TestCatchUpSurvivesAStall(t *testing.T) {
	h := newAppendHarness(t, pipeline.WithLinger(pipeline.Options{Size: 5, MaxRows: 1000, FlushInterval: time.Hour}, 100*time.Millisecond), 1, nil)
	catchUp := func(from, to int64) {
		for id := from; id <= to; id++ {
			it := rowItem(id)
			it.CatchUp = true
			h.send(it)
		}
		h.send(commitItem(pglogrepl.LSN(100 * to)))
	}
	catchUp(1, 10) // two full batches
	waitFor(t, "rows 1..10 appended", func() bool {
		return slices.ContainsFunc(h.dest.calls("append"), func(o op) bool { return slices.Contains(o.ids, 10) })
	})
	catchUp(11, 13)                    // a partial batch, then the stall: cut after linger
	time.Sleep(130 * time.Millisecond) // longer than linger, shorter than twice
	catchUp(14, 30)
	if err := h.closeAndWait(); err != nil {
		t.Fatal(err)
	}
	if commits := h.dest.calls("commit"); len(commits) != 1 {
		t.Errorf("%d commits %v, want one INSERT across the stall", len(commits), commits)
	}
	if got := h.dest.marked(); !slices.Equal(got, ids(1, 30)) {
		t.Errorf("marked %v, want 1..30", got)
	}
}
