package pipeline

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/sink"
)

// batcher cuts the items of one source into batches and hands them to the
// writer, one at a time, over an unbuffered channel: a hand-over succeeds
// exactly when the writer is free. That is what group commit rests on.
//
//   - A batch is ready at batch.size rows or flush_interval after its first
//     row (or when it carries only a position). A ready batch goes the
//     moment the writer is free, so an idle stream sees its rows within the
//     interval.
//   - While the writer is busy, the ready batch keeps filling up to
//     MaxRows rows or MaxBytes bytes. A batch that reached batch.size while
//     the writer was busy marks a backlog: batch.size no longer makes it
//     ready, only being full or flush_interval after its first row does.
//     A backlog therefore goes out in a few large inserts, at most about
//     one per flush_interval plus one per full batch, however small
//     batch.size is and however fast the writer (ClickHouse advises about
//     one insert per second per table), and a slow ClickHouse gets fewer,
//     larger inserts rather than more of them. The backlog ends when no
//     item comes for a hundredth of flush_interval: a backlog streams
//     without pauses, while live commits come with gaps between them (5 ms
//     is a transaction every 10 ms at 5,000 rows/s in 50-row transactions).
//     So neither the end of a backlog nor a live stream whose writer was
//     slow once waits the interval out.
//   - A full batch waits in a queue of at most Options.Queue batches; with
//     the queue full too, the batcher stops taking input (and the source,
//     with its byte budget, stops reading).
//   - A transaction end that comes while no row is buffered is queued at
//     once as a batch of its own, holding only a position: it becomes
//     durable with the marking in flight, not with the next batch, which
//     may be stuck in an outage (a slot must not keep the WAL of what is
//     delivered). Such batches hold no rows and do not count against the
//     queue; consecutive ones merge, so there is at most one per batch.
//
// Each batch carries, as its safe LSN, the end of the last transaction that
// was complete when it was handed over (or queued): every row of that
// transaction is in this batch or an earlier one, so a transaction larger
// than a batch becomes durable with its last batch only.
type batcher struct {
	opts       Options
	p          *Pipeline
	in         <-chan Item
	handOff    chan<- *batch
	writerDone <-chan struct{}

	cur *batch
	// queued are the batches waiting for the writer, oldest first: full
	// ones (fullQueued of them, at most opts.Queue) and positions.
	queued     []*batch
	fullQueued int
	// held is a row that would have taken cur past MaxBytes: it starts
	// the next batch, and no input is taken while it waits.
	held    Item
	holding bool
	// lastSafe is the end of the last complete transaction taken;
	// sentSafe is the safe LSN of the last batch queued or handed over.
	lastSafe, sentSafe pglogrepl.LSN
	// due is set when flush_interval has passed since cur's first row;
	// backlog when cur reached batch.size while the writer was busy;
	// closing once the input is closed: everything is then ready.
	due, backlog, closing bool
	// caughtUp is set when no item came for opts.quietGap while a backlog
	// held a batch back, until the next item.
	caughtUp bool
	// quietCut is set when the input went quiet while the writer held an
	// INSERT open (Options.Append): the batch being filled is ready, and
	// the INSERT is committed after it (batch.last).
	quietCut bool
	// afterBacklog is set while the last batch with rows handed over was
	// a backlog's (batch.more) to be appended: a partial batch after it is
	// the backlog's tail even before the writer has opened the INSERT.
	afterBacklog bool
	timer, quiet *time.Timer
	// unreported rows received: the observer hears once per burst.
	unreported int
}

// errInputClosed tells run that the source closed the input.
var errInputClosed = errors.New("pipeline: input closed")

func newBatcher(p *Pipeline, in <-chan Item, handOff chan<- *batch, writerDone <-chan struct{}) *batcher {
	timer, quiet := time.NewTimer(time.Hour), time.NewTimer(time.Hour)
	timer.Stop()
	quiet.Stop()
	return &batcher{opts: p.opts, p: p, in: in, handOff: handOff, writerDone: writerDone,
		cur: newBatch(p.opts.Size), timer: timer, quiet: quiet}
}

func newBatch(size int) *batch { return &batch{rows: make([]sink.Row, 0, size)} }

// run takes items until the input closes (then it hands over everything it
// holds) or the writer stops or ctx ends. Between items it hands a ready
// batch over if the writer is free and takes what is already waiting,
// without blocking: one wake-up per burst of rows, not one per row.
func (b *batcher) run(ctx context.Context) error {
	defer b.timer.Stop()
	defer b.quiet.Stop()
	for {
		if next := b.next(); next != nil {
			select {
			case b.handOff <- next:
				b.handedOver(next)
			default: // the writer is busy: keep filling
				if next == b.cur && b.p.inserting.Load() && !b.caughtUp {
					b.backlog = true
				}
			}
		}
		if !b.isFull() {
			select {
			case it, ok := <-b.in:
				if !ok {
					return b.flushAll(ctx)
				}
				b.take(it)
				continue
			default:
			}
		}
		b.report()
		if err := b.wait(ctx); errors.Is(err, errInputClosed) {
			return b.flushAll(ctx)
		} else if err != nil {
			return err
		}
	}
}

// wait blocks until something happens: an item, the writer taking the
// ready batch, the flush interval, or the end.
func (b *batcher) wait(ctx context.Context) error {
	next := b.next()
	var handOff chan<- *batch
	if next != nil {
		handOff = b.handOff
	}
	var in <-chan Item
	if !b.isFull() {
		in = b.in
	}
	switch {
	case b.backlog && len(b.cur.rows) >= b.opts.Size:
		// Held back by the backlog: unless more comes soon, it is over.
		b.quiet.Reset(b.opts.quietGap)
		defer b.quiet.Stop()
	case b.tailOfBacklog() && len(b.cur.rows) > 0 && next == nil:
		// A partial batch while an INSERT is open (or about to be): the
		// tail of a backlog, unless more comes within linger.
		b.quiet.Reset(b.opts.linger)
		defer b.quiet.Stop()
	}
	select {
	case handOff <- next: // a nil channel (nothing ready) never fires
		b.handedOver(next)
	case it, ok := <-in:
		if !ok {
			return errInputClosed
		}
		b.take(it)
	case <-b.timer.C:
		b.due = true
	case <-b.quiet.C:
		b.backlog, b.caughtUp = false, true
		b.quietCut = b.tailOfBacklog()
	case <-b.writerDone:
		return errWriterStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// tailOfBacklog reports whether rows now coming follow a backlog's batches
// into an INSERT kept open: it is open, or the writer was handed a batch
// for it and may not have opened it yet (it must not matter which of the
// two goroutines runs first).
func (b *batcher) tailOfBacklog() bool {
	return b.p.open.Load() || b.afterBacklog
}

// take adds one item to the batch being filled.
func (b *batcher) take(it Item) {
	b.caughtUp, b.quietCut = false, false
	if it.Row == nil {
		b.lastSafe = max(b.lastSafe, it.CommitEnd)
		if len(b.cur.rows) == 0 {
			b.queuePosition()
		}
		return
	}
	b.unreported++
	// Stop before the row that would take the batch past MaxBytes: a batch
	// stays within it, so two of them fit the default budget.
	if len(b.cur.rows) > 0 && b.cur.bytes+int64(it.Size) > b.opts.MaxBytes {
		b.held, b.holding = it, true
	} else {
		b.add(it)
	}
	b.queueFull()
}

func (b *batcher) add(it Item) {
	cur := b.cur
	if len(cur.rows) == 0 {
		b.timer.Reset(b.opts.FlushInterval)
		cur.first = time.Now()
	}
	cur.rows = append(cur.rows, *it.Row)
	cur.bytes += int64(it.Size)
	cur.catchUp = it.CatchUp // the last row says whether more is known to come
	if it.Xid != 0 && (len(cur.xids) == 0 || cur.xids[len(cur.xids)-1] != it.Xid) {
		cur.xids = append(cur.xids, it.Xid)
	}
}

// queuePosition queues the end of the last complete transaction when no
// row is buffered, merging it into a position queued just before.
func (b *batcher) queuePosition() {
	if b.lastSafe <= b.sentSafe {
		return
	}
	if n := len(b.queued); n > 0 && len(b.queued[n-1].rows) == 0 {
		b.queued[n-1].safe = b.lastSafe // not handed over yet: still ours
	} else {
		b.queued = append(b.queued, &batch{safe: b.lastSafe})
	}
	b.sentSafe = b.lastSafe
}

// isFull: the batch being filled takes no more rows (and the batcher no
// more items) until it is queued or handed over.
func (b *batcher) isFull() bool {
	return b.holding || len(b.cur.rows) >= b.opts.MaxRows || b.cur.bytes >= b.opts.MaxBytes
}

// queueFull moves a full batch being filled to the queue if there is room:
// the queue's bound is what bounds the batches held (DESIGN.md §3
// invariant 5).
func (b *batcher) queueFull() {
	if !b.isFull() || b.fullQueued >= b.opts.Queue {
		return
	}
	b.cur.safe = b.lastSafe
	b.cur.more = true
	b.queued = append(b.queued, b.cur)
	b.fullQueued++
	b.restart(b.cur.safe)
}

// restart begins a new batch once the one being filled is queued or handed
// over with the given safe LSN; a held row goes first into the new one.
func (b *batcher) restart(safe pglogrepl.LSN) {
	b.sentSafe = safe
	b.timer.Stop()
	b.due, b.backlog, b.quietCut = false, false, false
	b.cur = newBatch(b.opts.Size)
	if b.holding {
		b.add(b.held)
		b.held, b.holding = Item{}, false
	}
}

// next is the batch to hand over when the writer is free, or nil: the
// oldest queued one, else the one being filled once it is ready (at
// batch.size rows unless in a backlog, full, due or closing). The batch
// being filled gets the
// safe LSN of this moment: every row of a transaction that ended before it
// is in this batch or an earlier one.
func (b *batcher) next() *batch {
	if len(b.queued) > 0 {
		return b.queued[0]
	}
	cur := b.cur
	n := len(cur.rows)
	// Appending (Options.Append), a backlog is not held back: its batches
	// go into one open INSERT anyway, and are freed once sent.
	if n == 0 || !(n >= b.opts.Size && (!b.backlog || b.opts.Append) || b.due || b.closing || b.quietCut || b.isFull()) {
		return nil
	}
	cur.safe = b.lastSafe
	cur.last = b.quietCut
	// At least batch.size rows that came faster than batch.size per
	// linger (20,000 rows/s at the defaults: 1000 rows, 50 ms): a backlog,
	// more is coming (an INSERT is kept open for it). A partial batch, or
	// one that grew past batch.size only because a live stream's writer
	// was slow, is not.
	// So is a batch of rows the stream is catching up on (Item.CatchUp).
	cur.more = n >= b.opts.Size && (cur.catchUp || time.Since(cur.first)*time.Duration(b.opts.Size) < time.Duration(n)*b.opts.linger)
	return cur
}

// handedOver records that the writer took next (it owns it from now on).
func (b *batcher) handedOver(next *batch) {
	if len(next.rows) > 0 {
		b.afterBacklog = b.opts.Append && next.more
	}
	if len(b.queued) > 0 && next == b.queued[0] {
		b.queued = b.queued[1:]
		if len(next.rows) > 0 {
			b.fullQueued--
		}
	} else {
		b.restart(next.safe)
	}
	b.queueFull()
	b.report()
}

// flushAll hands over everything held once the input is closed: the
// queued batches, the one being filled and the held row, or just a
// position that came after the last row.
func (b *batcher) flushAll(ctx context.Context) error {
	b.closing = true
	for {
		next := b.next()
		if next == nil {
			return nil
		}
		select {
		case b.handOff <- next:
			b.handedOver(next)
		case <-b.writerDone:
			return errWriterStopped
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// report tells the observer the rows received since the last report and
// how many the batch being filled holds.
func (b *batcher) report() {
	b.p.obs.Buffered(b.unreported, len(b.cur.rows))
	b.unreported = 0
}
