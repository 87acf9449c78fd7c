package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
	"github.com/outbox-cdc/outbox-cdc/pipeline"
	"github.com/outbox-cdc/outbox-cdc/replication"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// source turns stream messages into pipeline items, and tells its
// confirmer where transactions begin and end and what keepalives say: the
// confirmer alone decides which LSN may be confirmed.
type source struct {
	schema, table string
	metrics       *metrics.Metrics
	dec           *decoder.Decoder
	// idCol is the id column's index of the outbox's relation, or -1 for
	// another one, keyed by relation OID: the server re-sends a Relation
	// message (after DDL, ANALYZE, autovacuum) and the decoder hands out a
	// new *Relation each time, so keying by pointer grew without bound.
	idCol map[uint32]int

	// catchUpTo: rows before it were in the WAL when the stream began
	// (catchUpEnd).
	catchUpTo pglogrepl.LSN
	inTxn     bool
	txnLSN    pglogrepl.LSN
	txnXid    uint32
	seq       uint64
	confirm   *checkpoint.Confirmer

	// pending is an item handle produced that the pipeline has not taken yet;
	// acquired says whether its bytes are already taken from budget.
	pending    pipeline.Item
	hasPending bool
	acquired   bool
	budget     *pipeline.Budget
	// rows hands out the rows of items, a chunk at a time: the pipeline
	// copies each row into its batch, so a chunk is garbage once its rows
	// are batched, and the stream costs no allocation per row. The chunk
	// being filled still points at the values of its rows already written,
	// outside the budget, so a chunk also ends after rowChunkBytes.
	rows      []sink.Row
	rowsBytes int

	// hb learns of each heartbeat with its transaction's end, so it can
	// tell when the heartbeat is durable (nil: heartbeats are off).
	hb          *heartbeatClock
	txnBeatSent time.Time // emit time of a heartbeat in the open transaction
}

const (
	rowChunk      = 256
	rowChunkBytes = 256 << 10
)

// catchUpTail is how much of the WAL before the stream began is not
// counted as its backlog (pipeline.Item.CatchUp). A quiet gap while rows are
// caught up on is taken for a stall of the walsender and waited out with
// the backlog's INSERT still open; the backlog's last rows are followed by
// a quiet gap that is its end, which should commit the INSERT at once. So
// the last rows go by the rate rule of a live stream instead: a tail of
// this size holds some 2,000 outbox rows, and the WAL that cdc itself and
// other tables write between the last row and the stream's start.
const catchUpTail = 1 << 20

// catchUpEnd is where the backlog a stream catches up on ends, for a stream
// that began when the server's WAL ended at serverEnd.
func catchUpEnd(serverEnd pglogrepl.LSN) pglogrepl.LSN {
	if serverEnd < catchUpTail {
		return 0
	}
	return serverEnd - catchUpTail
}

// newSource returns a source whose rows are counted against budget (nil:
// not bounded by bytes) and which tells confirm what it hands on.
func newSource(table string, m *metrics.Metrics, budget *pipeline.Budget, confirm *checkpoint.Confirmer) *source {
	schema, name := checkpoint.SplitTable(table)
	return &source{schema: schema, table: name, metrics: m, dec: decoder.New(), idCol: map[uint32]int{}, budget: budget, confirm: confirm}
}

// acquire takes the pending item's bytes from the budget, once; false means
// the budget is used up and the item must wait for a release.
func (s *source) acquire() bool {
	if !s.acquired {
		s.acquired = s.budget.TryAcquire(s.pending.Size)
	}
	return s.acquired
}

// handedOn records that the pipeline took the pending item: for a Commit,
// every row of its transaction is handed on.
func (s *source) handedOn() {
	if s.pending.Row == nil {
		s.confirm.Commit(s.pending.CommitEnd)
	}
	s.hasPending, s.acquired = false, false
}

// read feeds the stream's rows to the pipeline of dl until the graceful
// stop (it returns nil) or an error, calling status (which confirms what
// the confirmer allows, when due) all along.
func (s *source) read(ctx context.Context, sd *Shutdown, st *replication.Stream, dl *delivery, status func(context.Context) error) error {
	s.catchUpTo = catchUpEnd(st.ServerEnd())
	for {
		if sd.Draining() {
			return nil
		}
		if err := status(ctx); err != nil {
			return err
		}
		if s.hasPending {
			// Wait for the pipeline to take the item or, while its bytes
			// do not fit the budget, for a release; either way status
			// keeps going out every 200 ms.
			var out chan<- pipeline.Item
			var freed <-chan struct{}
			if s.acquire() {
				out = dl.in
			} else {
				freed = s.budget.Freed()
			}
			select {
			case out <- s.pending:
				s.handedOn()
			case <-freed:
			case <-time.After(200 * time.Millisecond):
			case <-sd.Drain():
			case <-dl.done:
				return pipelineStopped(dl.err)
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		msg, ok, err := st.Receive(ctx, 500*time.Millisecond)
		if err != nil {
			return err
		}
		if !ok {
			select {
			case <-dl.done:
				return pipelineStopped(dl.err)
			default:
			}
			continue
		}
		if msg.Keepalive {
			s.confirm.Keepalive(msg.ServerWALEnd)
			continue
		}
		if err := s.handle(msg); err != nil {
			return err
		}
		if s.hasPending && s.acquire() {
			select {
			case dl.in <- s.pending:
				s.handedOn()
			default:
			}
		}
	}
}

func (s *source) handle(msg replication.Message) error {
	ev, err := s.dec.Decode(msg.Data)
	if err != nil {
		return fmt.Errorf("decode message at %s: %w", msg.WALStart, err)
	}
	switch e := ev.(type) {
	case *decoder.Begin:
		s.inTxn, s.txnLSN, s.txnXid, s.seq, s.txnBeatSent = true, e.FinalLSN, e.Xid, 0, time.Time{}
		s.confirm.Begin()
	case *decoder.Relation:
		// A Relation of another table is harmless until a row of it comes;
		// a new one of ours (after DDL) may have moved the id column.
		delete(s.idCol, e.ID)
	case *decoder.Insert:
		if !s.inTxn {
			return fmt.Errorf("insert at %s outside a transaction", msg.WALStart)
		}
		idx, err := s.idColumn(e.Relation)
		if err != nil {
			return fmt.Errorf("insert at %s: %w", msg.WALStart, err)
		}
		id, ok := e.Values[idx].(int64)
		if !ok {
			return fmt.Errorf("row at %s: id %v is not an integer", msg.WALStart, e.Values[idx])
		}
		if len(s.rows) == cap(s.rows) || s.rowsBytes >= rowChunkBytes {
			s.rows, s.rowsBytes = make([]sink.Row, 0, rowChunk), 0
		}
		s.rows = append(s.rows, sink.Row{Pos: sink.Position{LSN: uint64(s.txnLSN), Seq: s.seq}, ID: id, Relation: e.Relation, Values: e.Values})
		r := &s.rows[len(s.rows)-1]
		size := r.Size()
		s.rowsBytes += size
		s.pending, s.hasPending, s.acquired = pipeline.Item{Row: r, Size: size, Xid: s.txnXid, CatchUp: msg.WALStart < s.catchUpTo}, true, false
		s.seq++
	case *decoder.Commit:
		// Its end (TransactionEndLSN), not its CommitLSN, is what a
		// confirmation may name: confirming the CommitLSN re-sends it.
		s.inTxn = false
		s.pending, s.hasPending, s.acquired = pipeline.Item{CommitEnd: e.EndLSN}, true, true
		if !s.txnBeatSent.IsZero() {
			s.hb.saw(e.EndLSN, s.txnBeatSent)
		}
	case *decoder.Message:
		if e.Prefix == replication.HeartbeatPrefix {
			if sent, err := time.Parse(time.RFC3339Nano, string(e.Content)); err == nil {
				s.txnBeatSent = sent
			}
		}
	}
	return nil
}

// idColumn returns the id column's index of the outbox's relation. A row of
// any other relation is an error, not a row to skip: skipping it would let
// the slot be confirmed past it, and if it is in fact the outbox's (renamed,
// or a partition published under its own name) it would stay pending
// forever. The session ends before the transaction's Commit is handed on.
func (s *source) idColumn(rel *decoder.Relation) (int, error) {
	idx, ok := s.idCol[rel.ID]
	if !ok {
		idx = -1
		if rel.Namespace == s.schema && rel.Name == s.table {
			if idx = rel.ColumnIndex("id"); idx < 0 {
				return 0, fmt.Errorf("relation %s has no id column", rel.QualifiedName())
			}
		}
		s.idCol[rel.ID] = idx
	}
	if idx < 0 {
		return 0, fmt.Errorf("row of relation %s (OID %d), not of the outbox %s.%s: the slot is not confirmed past it. "+
			"Check that postgres.publication publishes the outbox alone (pg_publication_tables), a partitioned outbox "+
			"via its root (publish_via_partition_root = true), and that postgres.table names the outbox (was it renamed?). "+
			"A row written before the fix stays in the slot: then stop cdc, drop the slot (pg_drop_replication_slot) "+
			"and start cdc, which re-creates it and backfills every pending row",
			rel.QualifiedName(), rel.ID, s.schema, s.table)
	}
	return idx, nil
}
