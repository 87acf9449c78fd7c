package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/backoff"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// Appender is a Writer that can keep one INSERT open across batches
// (sink.ClickHouse; see its Append): rows appended are sent and forgotten,
// and stored only when Commit returns. After an error from Append or Commit
// the open INSERT's rows must be read again from their source.
type Appender interface {
	Writer
	// Appendable reports whether rows need no check of what is stored,
	// so that they may be appended.
	Appendable(rows []sink.Row) bool
	Append(ctx context.Context, rows []sink.Row) ([]sink.Rejected, error)
	Commit(ctx context.Context) error
	// Abandon gives up the open INSERT, if any, when the pipeline ends
	// without committing it (its rows come again from their source). The
	// server must not keep it open: a successor waits for it to end.
	Abandon()
}

// MarkingStarter is a Marker that can mark rows in a transaction kept open
// while their INSERT is (checkpoint.Store.BeginMarking), so that the
// markings of an open INSERT are done while it is still being sent and only
// committed once it is.
type MarkingStarter interface {
	BeginMarking(ctx context.Context) (OpenMarking, error)
}

// OpenMarking is a transaction of markings (checkpoint.Marking).
type OpenMarking interface {
	MarkProcessed(ctx context.Context, ids []int64, xids []uint32) error
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// ErrResend is the error of an INSERT kept open across batches that failed
// (it wraps the failure): the rows it carried are not kept, and must be read
// again from the source, after the sink learns what the INSERT stored.
var ErrResend = errors.New("the INSERT kept open across batches failed; its rows must be read again")

// writer delivers batches in order. Marking batch k runs while batch k+1 is
// inserted (two servers, two cores' worth of work at once), but the tracker
// still advances strictly in order: to batch k's safe LSN only once batch k
// is marked, and before batch k+1's marking starts. Rejected rows are the
// exception that does not overlap: they are marked failed before the next
// batch is inserted, because after a crash a rejected row that is not yet
// marked must still be inside the window the sink re-checks.
//
// With Options.Append and an Appender, a batch whose rows need no check of
// what is stored is appended to an INSERT kept open (openInsert): the next
// batch goes into the same INSERT if it comes within Options.linger, until
// the INSERT holds MaxRows rows or is a second old (FlushInterval if
// longer: ClickHouse advises about one insert per second per table, and a
// backlog's rows are late already). It is then
// committed, and its rows marked (and their markings, done meanwhile in an
// open transaction when the Marker can, committed) before the tracker
// advances. A backlog thus costs one INSERT per MaxRows rows or
// second, while the rows sent are freed at once. An Append or Commit
// that fails ends the pipeline with the error: the rows sent are gone, and
// the stream must restart from its slot's confirmed position (the sink
// then checks them by id).
type writer struct {
	p       *Pipeline
	app     Appender       // nil: every batch is inserted on its own
	starter MarkingStarter // nil: an open INSERT's rows are marked after it
	// marking is the outcome of the marking in flight, if any.
	marking chan error
	// safe is the position that becomes durable with the marking in
	// flight: its batch's, or a later one riding on it.
	safe   atomic.Uint64
	open   *openInsert
	linger *time.Timer
}

// openInsert is the INSERT kept open across batches and what its commit
// makes durable.
type openInsert struct {
	started  time.Time
	batches  int
	rows     int // rows of its batches
	ids      []int64
	xids     []uint32
	failures []checkpoint.Failure
	safe     pglogrepl.LSN
	premark  *premark // nil without a MarkingStarter
}

func newWriter(p *Pipeline) *writer {
	w := &writer{p: p, linger: time.NewTimer(time.Hour)}
	w.linger.Stop()
	if app, ok := p.sink.(Appender); ok && p.opts.Append {
		w.app = app
		w.starter, _ = p.marker.(MarkingStarter)
	}
	return w
}

func (w *writer) run(ctx context.Context, queue <-chan *batch) error {
	defer w.linger.Stop()
	defer w.drop()
	for {
		var (
			b      *batch
			ok     bool
			linger <-chan time.Time
		)
		if w.open != nil {
			linger = w.linger.C
		}
		select {
		case err := <-w.marking: // a nil channel (nothing being marked) never fires
			// Durable as soon as it is marked, not when the next batch
			// comes: an idle stream must still confirm its last commit.
			if err := w.marked(err); err != nil {
				return err
			}
			continue
		case <-linger:
			if err := w.commit(ctx); err != nil {
				return err
			}
			continue
		case b, ok = <-queue:
		}
		if !ok {
			if err := w.commit(ctx); err != nil {
				return err
			}
			return w.settle()
		}
		if len(b.rows) == 0 {
			// Only a position (a commit that ended right after a full batch,
			// or an idle stream): it is durable once the batches before it
			// are, so it rides on the open INSERT or the marking in flight.
			// Waiting for that marking here would hold the next insert back
			// behind it.
			switch {
			case w.open != nil:
				w.open.safe = b.safe
			case w.marking != nil:
				w.safe.Store(uint64(b.safe))
			default:
				w.p.advance(b.safe)
			}
			continue
		}
		var err error
		// A backlog's batches go into an INSERT kept open; any other batch
		// is inserted on its own, and retried in place when that fails.
		if w.open != nil || w.app != nil && b.more && w.app.Appendable(b.rows) {
			err = w.append(ctx, b)
		} else {
			err = w.insert(ctx, b)
		}
		if err != nil {
			return err
		}
	}
}

// marked takes the outcome of the batch being marked: durable unless the
// marking failed.
func (w *writer) marked(err error) error {
	w.marking = nil
	if err != nil {
		return err
	}
	w.p.advance(pglogrepl.LSN(w.safe.Load()))
	return nil
}

// settle waits for the batch being marked, if any.
func (w *writer) settle() error {
	if w.marking == nil {
		return nil
	}
	return w.marked(<-w.marking)
}

// startMarking runs mark in its own goroutine as the marking in flight; safe
// becomes durable when it succeeds. The marking holds only ids: the rows
// can be freed while the next batch is filled and inserted. The batch is
// durable the moment it is marked, not when the writer next looks (that may
// be after the next insert, which can take an outage long): markings run
// one at a time and each starts after the one before settled, so positions
// still advance in order.
func (w *writer) startMarking(safe pglogrepl.LSN, mark func() error) {
	w.marking = make(chan error, 1)
	w.safe.Store(uint64(safe))
	go func(done chan<- error) {
		err := mark()
		if err == nil {
			w.p.advance(pglogrepl.LSN(w.safe.Load()))
		}
		done <- err
	}(w.marking)
}

// insert delivers a batch as an INSERT of its own.
func (w *writer) insert(ctx context.Context, b *batch) error {
	p := w.p
	p.inserting.Store(true)
	ids, start, err := p.insert(ctx, b)
	if err == nil {
		err = w.settle()
	}
	p.inserting.Store(false)
	if err != nil {
		_ = w.settle() // never leave a marking running behind our back
		return err
	}
	n := len(b.rows)
	w.startMarking(b.safe, func() error { return p.mark(ctx, n, b.safe, ids, b.xids, start) })
	return nil
}

// append sends a batch into the open INSERT (opening one), and commits it
// when it is full or old enough.
func (w *writer) append(ctx context.Context, b *batch) error {
	p := w.p
	if w.open != nil && w.open.rows+len(b.rows) > p.opts.MaxRows {
		if err := w.commit(ctx); err != nil {
			return err
		}
	}
	p.inserting.Store(true)
	rejected, err := w.app.Append(ctx, b.rows)
	p.opts.Budget.Release(b.bytes) // the rows are sent: nothing holds them
	p.inserting.Store(false)
	if err != nil {
		p.obs.InsertFailed(err)
		return fmt.Errorf("%w: %w", ErrResend, err)
	}
	o := w.open
	if o == nil {
		o = &openInsert{started: time.Now()}
		if w.starter != nil {
			o.premark = startPremark(ctx, w.starter)
		}
		w.open = o
		p.open.Store(true)
	}
	ids := o.add(b, rejected)
	if o.premark != nil {
		o.premark.mark(ids, b.xids)
	}
	// A partial batch cut because the input went quiet ends the backlog
	// (b.last), unless its rows are caught up on: then the pause is the
	// stream stalling in the middle of what it knows is there.
	end := b.last && !b.catchUp
	if end || !b.more && !b.last || o.rows >= p.opts.MaxRows-p.opts.Size || time.Since(o.started) >= p.opts.openFor {
		return w.commit(ctx)
	}
	if b.catchUp {
		// More rows are known to come (the stream catches up on what was
		// in the WAL when it began), however slowly the walsender sends
		// them: the INSERT stays open until it is old enough.
		w.linger.Reset(time.Until(o.started.Add(p.opts.openFor)))
		return nil
	}
	// The batcher cuts a partial batch after linger without input: allow
	// for that and its append.
	w.linger.Reset(2 * p.opts.linger)
	return nil
}

// add records a batch appended to the INSERT and returns the ids of its
// rows that were sent.
func (o *openInsert) add(b *batch, rejected []sink.Rejected) []int64 {
	o.batches++
	o.rows += len(b.rows)
	o.safe = b.safe
	for _, x := range b.xids {
		if len(o.xids) == 0 || o.xids[len(o.xids)-1] != x {
			o.xids = append(o.xids, x)
		}
	}
	from := len(o.ids)
	skip := make(map[int64]bool, len(rejected))
	for _, r := range rejected {
		skip[r.ID] = true
		o.failures = append(o.failures, checkpoint.Failure{ID: r.ID, Error: r.Err.Error(), LSN: pglogrepl.LSN(r.Pos.LSN), Seq: r.Pos.Seq})
	}
	for _, r := range b.rows {
		if !skip[r.ID] {
			o.ids = append(o.ids, r.ID)
		}
	}
	return o.ids[from:]
}

// commit ends the open INSERT, if any, and starts its marking.
func (w *writer) commit(ctx context.Context) error {
	o := w.open
	if o == nil {
		return nil
	}
	p := w.p
	w.linger.Stop()
	p.inserting.Store(true)
	committing := time.Now()
	err := w.app.Commit(ctx)
	w.open = nil
	p.open.Store(false)
	if err == nil {
		err = w.settle()
	}
	p.inserting.Store(false)
	if err != nil {
		o.premark.rollback()
		_ = w.settle()
		p.obs.InsertFailed(err)
		return fmt.Errorf("%w: %w", ErrResend, err)
	}
	p.obs.Inserted(o.rows - len(o.failures))
	p.log.Debug("inserted", "rows", o.rows, "batches", o.batches, "rejected", len(o.failures),
		"duration", time.Since(o.started), "commit_duration", time.Since(committing))
	w.startMarking(o.safe, func() error { return w.finish(ctx, o) })
	return nil
}

// finish marks the rows of a committed INSERT: those rejected failed, the
// others processed (committing the markings done meanwhile, or, when those
// failed, marking them again).
func (w *writer) finish(ctx context.Context, o *openInsert) error {
	p := w.p
	if len(o.failures) > 0 {
		for _, f := range o.failures {
			p.log.Error("row rejected by ClickHouse, marked failed", "id", f.ID, "err", f.Error)
		}
		if err := backoff.Retry(ctx, p.retry, p.log, "postgres mark failed", func(ctx context.Context) error {
			return p.marker.MarkFailed(ctx, o.failures, o.xids)
		}); err != nil {
			o.premark.rollback()
			return err
		}
		p.obs.Rejected(len(o.failures))
	}
	marked := time.Now()
	premarked := false
	if o.premark != nil {
		err := o.premark.commit(ctx)
		if premarked = err == nil; !premarked {
			p.log.Warn("markings done while the INSERT was open failed; marking its rows again", "rows", len(o.ids), "err", err)
		}
	}
	if !premarked {
		if err := backoff.Retry(ctx, p.retry, p.log, "postgres mark processed", func(ctx context.Context) error {
			return p.marker.MarkProcessed(ctx, o.ids, o.xids)
		}); err != nil {
			return err
		}
	}
	took := time.Since(o.started)
	p.obs.Delivered(o.rows, took)
	p.log.Debug("flushed", "rows", o.rows, "safe_lsn", o.safe.String(), "duration", took,
		"mark_duration", time.Since(marked))
	return nil
}

// drop gives up an INSERT left open when the writer stops on an error or
// the hard stop: its markings are rolled back (the sink abandons the INSERT
// itself when the next stream recovers).
func (w *writer) drop() {
	if w.open != nil {
		w.app.Abandon()
		w.open.premark.rollback()
		w.open = nil
		w.p.open.Store(false)
	}
}

// premark runs the markings of an open INSERT in a transaction of their
// own (MarkingStarter), one batch after another in its own goroutine, so
// that appending never waits for PostgreSQL.
type premark struct {
	jobs   chan premarkJob
	done   chan struct{}
	closed bool
	m      OpenMarking
	err    error
}

type premarkJob struct {
	ids  []int64
	xids []uint32
}

func startPremark(ctx context.Context, s MarkingStarter) *premark {
	pm := &premark{jobs: make(chan premarkJob, 256), done: make(chan struct{})}
	go func() {
		defer close(pm.done)
		m, err := s.BeginMarking(ctx)
		for job, open := range pm.next {
			if err == nil && len(job.ids) > 0 {
				err = m.MarkProcessed(ctx, job.ids, job.xids)
			}
			if !open {
				break
			}
		}
		pm.m, pm.err = m, err
	}()
	return pm
}

// next yields the markings queued, those that queued up while PostgreSQL
// was busy merged into one statement, and whether more may come.
func (pm *premark) next(yield func(premarkJob, bool) bool) {
	for {
		job, ok := <-pm.jobs
		if !ok {
			return
		}
		open := true
	drain:
		for open {
			select {
			case j, ok := <-pm.jobs:
				if !ok {
					open = false
					break drain
				}
				job.ids = slices.Concat(job.ids, j.ids)
				for _, x := range j.xids {
					if !slices.Contains(job.xids, x) {
						job.xids = append(slices.Clip(job.xids), x)
					}
				}
			default:
				break drain
			}
		}
		if !yield(job, open) || !open {
			return
		}
	}
}

// mark queues the marking of a batch's rows.
func (pm *premark) mark(ids []int64, xids []uint32) {
	pm.jobs <- premarkJob{ids: ids, xids: xids}
}

// wait lets the markings queued finish and returns their error.
func (pm *premark) wait() error {
	if !pm.closed {
		pm.closed = true
		close(pm.jobs)
	}
	<-pm.done
	return pm.err
}

// commit commits the markings; on any error they are rolled back.
func (pm *premark) commit(ctx context.Context) error {
	if err := pm.wait(); err != nil {
		pm.rollback()
		return err
	}
	if err := pm.m.Commit(ctx); err != nil {
		pm.rollback()
		return err
	}
	return nil
}

// rollback undoes the markings (after commit it does nothing).
func (pm *premark) rollback() {
	if pm == nil {
		return
	}
	_ = pm.wait()
	if pm.m != nil {
		// Bounded: a server that does not answer rolls it back anyway
		// when the connection goes.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = pm.m.Rollback(ctx)
	}
}
