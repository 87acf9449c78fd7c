// Package pipeline batches outbox rows and delivers each batch: insert into
// ClickHouse, mark the rows in PostgreSQL, then advance the durable LSN.
//
// Two goroutines: the batcher fills batches while the writer delivers the
// previous ones, strictly in order. A batch is ready at batch.size rows or
// flush_interval after its first row, and goes as soon as the writer is
// free; while the writer is busy it keeps filling up to Options.MaxRows or
// Options.MaxBytes (group commit). With Options.Append (the stream), a
// backlog's batches go into one INSERT kept open across them, committed at
// MaxRows rows or after a second (writer.go). Each batch carries the end LSN
// of the last transaction that was complete when it was handed over; the
// writer advances the tracker to it only after the batch (or the INSERT
// holding it) is delivered, so a transaction larger than a batch becomes
// durable with its last batch.
//
// Memory is bounded in bytes (docs/configuration.md, Memory): a batch never
// exceeds Options.MaxBytes (unless it is one row larger than that), and
// Options.Budget counts every row from the moment its source hands it on
// until the insert of its batch is over (or the batch is sent into an open
// INSERT) — the input channel, the batch being
// filled, the Options.Queue full batches waiting and the one being written. When
// ClickHouse is down the writer retries, the budget runs out, and the source
// stops reading (the stream leaves the rest in the slot, with TCP
// backpressure on the walsender).
package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/backoff"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// Item is what a source feeds the pipeline: a row, or the end of a
// transaction whose rows were all sent before it.
type Item struct {
	Row *sink.Row
	// CommitEnd, when Row is nil, is the end LSN of a transaction.
	CommitEnd pglogrepl.LSN
	// Size is the row's size in bytes (sink.Row.Size), for the byte cap.
	// A source with a Budget acquires it before sending the item; the
	// pipeline releases it once the row's batch is inserted.
	Size int
	// Xid is the transaction a streamed row comes from (0 for rows read
	// from a snapshot: backfill, re-drive). Its batch is marked only once
	// that transaction is visible to the marking (checkpoint.Store
	// markVisible): decoded is not yet visible.
	Xid uint32
	// CatchUp is set on a streamed row that was already in the WAL when
	// the stream started: the stream is catching up, and the row's batch is
	// a backlog's however slowly the rows come (writer: an INSERT kept
	// open, across pauses too).
	CatchUp bool
}

// Writer stores rows in ClickHouse (sink.ClickHouse).
type Writer interface {
	Write(ctx context.Context, rows []sink.Row) (sink.Result, error)
}

// Pinger is a Writer that can tell cheaply whether its server answers
// (sink.ClickHouse does). While the server is unreachable, the pipeline
// then retries an insert as soon as a ping answers, instead of waiting out
// a backoff of up to retry.max_backoff after the server is back.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Marker records delivery in PostgreSQL (checkpoint.Store). xids are the
// transactions the batch's rows were streamed from: a marking must see
// every one of them, or it would skip their rows.
type Marker interface {
	MarkProcessed(ctx context.Context, ids []int64, xids []uint32) error
	MarkFailed(ctx context.Context, failures []checkpoint.Failure, xids []uint32) error
}

// Positions takes the durable LSN as it advances (checkpoint.Confirmer for
// the stream; checkpoint.Tracker): every transaction ending at or before it
// is inserted and marked. Calls come from the pipeline's goroutines, in
// order but not from one goroutine. A nil Positions (the backfill, the
// re-drives, replay: their rows have no slot position to confirm) is not
// told.
type Positions interface {
	Advance(lsn pglogrepl.LSN)
}

// Options tune batching (see batcher for how they play together).
type Options struct {
	// Size and FlushInterval make a batch ready: it goes to a free writer
	// at Size rows or FlushInterval after its first row.
	Size          int
	FlushInterval time.Duration
	// MaxRows and MaxBytes make a batch full: while the writer is busy, a
	// ready batch keeps filling up to MaxRows rows or MaxBytes bytes
	// (group commit). MaxRows 0 (or below Size) means Size: no growth.
	// MaxRows also bounds the rows of an INSERT kept open (Append).
	MaxRows  int
	MaxBytes int64
	// Queue is how many full batches may wait for the writer. With 0 a
	// full batch waits until the writer takes it, and no input is taken
	// meanwhile.
	Queue int
	// Append keeps one INSERT open across the batches of a backlog when
	// the Writer is an Appender (see writer): a backlog then makes an
	// INSERT per MaxRows rows or second, not one per batch. Only
	// for a source whose rows can be read again after a failed INSERT
	// (the stream, from its slot): the rows sent are not kept.
	Append bool
	Retry  Backoff
	// quietGap ends a backlog: no item for this long means the batcher
	// caught up with the source (default FlushInterval/100, at least 1 ms;
	// tests set it through export_test.go).
	quietGap time.Duration
	// linger tells a backlog from a live stream: a batch that filled
	// faster is part of a backlog, and an INSERT kept open waits for the
	// next one; a partial batch with no row for this long ends it
	// (default FlushInterval/20).
	linger time.Duration
	// openFor is how long an INSERT may stay open: a second, or
	// FlushInterval if longer.
	openFor time.Duration
	// Budget, when set, is the byte budget the source acquires each row's
	// Item.Size from; the pipeline releases a batch's bytes after its
	// insert. Nil leaves the rows held bounded by counts only.
	Budget *Budget
}

// DefaultBudget is the byte budget for a pipeline cutting batches of at most
// maxBytes: one batch being written and one being filled (or queued). Rows
// then take at most 2 × maxBytes, which is what the memory bound of
// docs/configuration.md (peak RSS < 2 × batch.max_bytes + 64 MiB) is
// built from.
func DefaultBudget(maxBytes int64) *Budget {
	return NewBudget(2 * maxBytes)
}

// Pipeline delivers items from one source.
type Pipeline struct {
	opts    Options
	sink    Writer
	marker  Marker
	tracker Positions
	obs     Observer
	retry   backoff.Policy
	log     *slog.Logger
	// inserting is set while the writer delivers a batch of rows (insert,
	// then waiting for the marking before): the batcher tells a backlog
	// from a writer that is merely not back at its receive yet.
	inserting atomic.Bool
	// open is set while the writer keeps an INSERT open across batches
	// (Options.Append): a partial batch then goes once the input is quiet.
	open atomic.Bool
}

// New returns a pipeline; t and obs may be nil.
func New(opts Options, w Writer, mk Marker, t Positions, obs Observer, log *slog.Logger) *Pipeline {
	if opts.Size <= 0 {
		opts.Size = 1000
	}
	opts.MaxRows = max(opts.MaxRows, opts.Size)
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 16 << 20
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	opts.Queue = max(opts.Queue, 0)
	if opts.quietGap <= 0 {
		opts.quietGap = max(opts.FlushInterval/100, time.Millisecond)
	}
	opts.openFor = max(opts.FlushInterval, time.Second)
	if opts.linger <= 0 {
		opts.linger = max(opts.FlushInterval/20, time.Millisecond)
	}
	if _, ok := w.(Appender); !ok {
		opts.Append = false
	}
	if obs == nil {
		obs = noObserver{}
	}
	return &Pipeline{opts: opts, sink: w, marker: mk, tracker: t, obs: obs, retry: backoff.Policy(opts.Retry), log: log}
}

type batch struct {
	rows  []sink.Row
	bytes int64
	// safe is the end LSN of the last transaction complete at the cut.
	safe pglogrepl.LSN
	// xids are the transactions of the streamed rows, once each (a
	// transaction's rows come together; one cut in two batches is in both).
	xids []uint32
	// last is set on a batch cut because the input went quiet while an
	// INSERT was open: the writer commits that INSERT after it.
	last bool
	// more is set when the batch filled as a backlog does (see next):
	// an INSERT left open after it waits for the next one.
	more  bool
	first time.Time // when its first row came
	// catchUp: its last row came with Item.CatchUp (more rows are known to
	// follow).
	catchUp bool
}

// Run delivers items until in is closed (then everything received is
// delivered before it returns nil) or ctx ends (it returns at once; what was
// not delivered is not durable and will be sent again).
func (p *Pipeline) Run(ctx context.Context, in <-chan Item) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Unbuffered: a hand-over succeeds exactly when the writer is free,
	// which is what lets the batch being filled grow meanwhile (batcher).
	queue := make(chan *batch)
	// writerDone is closed, not sent on, once writerErr is set: the batcher
	// and Run both wait for it, and a single value taken by the batcher
	// would leave Run waiting forever.
	writerDone := make(chan struct{})
	var writerErr error
	go func() {
		defer close(writerDone)
		writerErr = newWriter(p).run(ctx, queue)
	}()

	err := newBatcher(p, in, queue, writerDone).run(ctx)
	close(queue)
	if err != nil {
		cancel()
	}
	<-writerDone
	if errors.Is(err, errWriterStopped) {
		if writerErr != nil {
			return writerErr
		}
		return err
	}
	if err != nil {
		return err
	}
	return writerErr
}

// errWriterStopped tells Run that the batcher stopped because the writer did.
var errWriterStopped = errors.New("pipeline: writer stopped")

// advance tells the positions' owner that safe is durable. Which LSN is
// then confirmed to the slot is not the pipeline's to decide
// (checkpoint.Confirmer).
func (p *Pipeline) advance(safe pglogrepl.LSN) {
	if p.tracker != nil {
		p.tracker.Advance(safe)
	}
}

// probe is how an insert that found ClickHouse unreachable learns that it
// is back: a ping every 200ms, when the writer can ping.
func (p *Pipeline) probe() backoff.Probe {
	pinger, ok := p.sink.(Pinger)
	if !ok {
		return backoff.Probe{}
	}
	return backoff.Probe{Down: sink.Unreachable, Up: pinger.Ping, Interval: 200 * time.Millisecond}
}

// insert writes a batch to ClickHouse, marks the rows it rejected failed,
// and returns the ids still to mark processed.
func (p *Pipeline) insert(ctx context.Context, b *batch) (ids []int64, start time.Time, err error) {
	// The batch's rows are not needed once the insert is over (the marking
	// holds ids): their bytes go back to the source.
	defer p.opts.Budget.Release(b.bytes)
	start = time.Now()
	var res sink.Result
	err = backoff.RetryProbing(ctx, p.retry, p.probe(), p.log, "clickhouse insert", func(ctx context.Context) error {
		var err error
		res, err = p.sink.Write(ctx, b.rows)
		if err != nil {
			p.obs.InsertFailed(err)
		}
		return err
	})
	if err != nil {
		return nil, start, err
	}
	p.obs.Inserted(res.Inserted)
	p.log.Debug("inserted", "rows", len(b.rows), "inserted", res.Inserted, "skipped", res.Skipped,
		"rejected", len(res.Rejected), "duration", time.Since(start))
	ids = make([]int64, 0, len(b.rows))
	if len(res.Rejected) == 0 {
		for _, r := range b.rows {
			ids = append(ids, r.ID)
		}
		return ids, start, nil
	}
	rejected := make(map[int64]bool, len(res.Rejected))
	failures := make([]checkpoint.Failure, len(res.Rejected))
	for i, r := range res.Rejected {
		failures[i] = checkpoint.Failure{ID: r.ID, Error: r.Err.Error(), LSN: pglogrepl.LSN(r.Pos.LSN), Seq: r.Pos.Seq}
		rejected[r.ID] = true
		p.log.Error("row rejected by ClickHouse, marked failed", "id", r.ID, "err", r.Err)
	}
	if err := backoff.Retry(ctx, p.retry, p.log, "postgres mark failed", func(ctx context.Context) error {
		return p.marker.MarkFailed(ctx, failures, b.xids)
	}); err != nil {
		return nil, start, err
	}
	p.obs.Rejected(len(failures))
	for _, r := range b.rows {
		if !rejected[r.ID] {
			ids = append(ids, r.ID)
		}
	}
	return ids, start, nil
}

// mark marks a batch's delivered rows processed (ids, of the n rows of a
// batch whose safe LSN is safe, streamed from transactions xids); start is
// when its insert began, for the flush duration.
func (p *Pipeline) mark(ctx context.Context, n int, safe pglogrepl.LSN, ids []int64, xids []uint32, start time.Time) error {
	marked := time.Now()
	if err := backoff.Retry(ctx, p.retry, p.log, "postgres mark processed", func(ctx context.Context) error {
		return p.marker.MarkProcessed(ctx, ids, xids)
	}); err != nil {
		return err
	}
	took := time.Since(start)
	p.obs.Delivered(n, took)
	p.log.Debug("flushed", "rows", n, "safe_lsn", safe.String(), "duration", took,
		"mark_duration", time.Since(marked))
	return nil
}
