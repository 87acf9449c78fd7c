// Package backfill delivers the outbox rows that were already waiting when
// the replication slot was created: every row not yet `processed` in the
// snapshot the slot exported. Rows committed later arrive through the slot.
//
// The exported snapshot dies with the connection that created the slot, so
// the list of ids to deliver is written to cdc_backfill inside that snapshot
// and committed before streaming starts. A daemon killed mid-backfill resumes
// from the list; rows it had already delivered are `processed` (skipped) or
// recognised by the sink, which looks every backfilled row up by id and
// fingerprint: the list may name rows an earlier slot delivered but never
// marked (a lost or dropped slot, a failover that did not carry the slot). Backfilled rows are versioned at the slot's
// consistent point minus one, below every streamed transaction.
package backfill

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// State is the slot's row in cdc_slot_state.
type State struct {
	Exists        bool
	ConsistentLSN pglogrepl.LSN
	Done          bool
}

// Creating reports whether the row says a creation of the slot began and
// never recorded its backfill list (BeginCreation without Prepare): a slot
// by that name then has no list of the rows that predate it.
func (s State) Creating() bool { return s.Exists && s.ConsistentLSN == 0 }

// BeginCreation records, before the slot is created, that a creation is
// under way. A daemon that dies after creating the slot but before Prepare
// committed leaves this mark; without it the row of an earlier slot by the
// same name (a re-creation after a lost slot or a failover, where the row
// came over by replication) would say "backfill done", and the rows that
// were pending when the new slot was created would never be delivered.
func BeginCreation(ctx context.Context, pool *pgxpool.Pool, slot string) error {
	_, err := pool.Exec(ctx, `INSERT INTO cdc_slot_state (slot, consistent_lsn, backfill_done, created_at) VALUES ($1, '0/0', false, now())
	  ON CONFLICT (slot) DO UPDATE SET consistent_lsn = '0/0', backfill_done = false, created_at = now()`, slot)
	if err != nil {
		return fmt.Errorf("postgres: record the creation of slot %q: %w", slot, err)
	}
	return nil
}

// LoadState reads the slot's state; Exists is false when the slot was never
// (completely) set up by this daemon.
func LoadState(ctx context.Context, pool *pgxpool.Pool, slot string) (State, error) {
	var st State
	var lsn string
	err := pool.QueryRow(ctx, `SELECT consistent_lsn::text, backfill_done FROM cdc_slot_state WHERE slot = $1`, slot).Scan(&lsn, &st.Done)
	if errors.Is(err, pgx.ErrNoRows) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("postgres: read cdc_slot_state for %q: %w", slot, err)
	}
	st.Exists = true
	st.ConsistentLSN, err = pglogrepl.ParseLSN(lsn)
	if err != nil {
		return State{}, fmt.Errorf("postgres: cdc_slot_state for %q: bad lsn %q: %w", slot, lsn, err)
	}
	return st, nil
}

// Prepare records, in the snapshot exported by the slot's creation, which
// rows the backfill must deliver, and the slot's state. It must run while the
// creating replication connection is still idle.
func Prepare(ctx context.Context, pool *pgxpool.Pool, slot, table, snapshot string, consistent pglogrepl.LSN) (int64, error) {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		return 0, fmt.Errorf("postgres: begin backfill snapshot: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET TRANSACTION SNAPSHOT '%s'", snapshot)); err != nil {
		return 0, fmt.Errorf("postgres: import snapshot %s: %w", snapshot, err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM cdc_backfill WHERE slot = $1`, slot); err != nil {
		return 0, fmt.Errorf("postgres: reset backfill list: %w", err)
	}
	tag, err := tx.Exec(ctx, `INSERT INTO cdc_backfill (slot, id) SELECT $1, id FROM `+checkpoint.QuoteTable(table)+
		` WHERE status IS DISTINCT FROM 'processed'`, slot)
	if err != nil {
		return 0, fmt.Errorf("postgres: list rows to backfill from %s: %w", table, err)
	}
	_, err = tx.Exec(ctx, `INSERT INTO cdc_slot_state (slot, consistent_lsn, backfill_done, created_at)
	  VALUES ($1, $2::pg_lsn, false, now())
	  ON CONFLICT (slot) DO UPDATE SET consistent_lsn = EXCLUDED.consistent_lsn, backfill_done = false, recreated = true, created_at = now()`,
		slot, consistent.String())
	if err != nil {
		return 0, fmt.Errorf("postgres: record slot state: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("postgres: commit backfill list: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Position is the stream position backfilled row id is versioned with.
func Position(consistent pglogrepl.LSN, id int64) sink.Position {
	return sink.Position{LSN: uint64(consistent) - 1, Seq: uint64(id)}
}

// Run emits the listed rows that are not yet processed, in id order, chunk
// rows per query. Values are read in text format and decoded by the same
// decoder the stream uses, so both paths produce identical ClickHouse rows.
// The pool's sessions must use DateStyle=ISO and TimeZone=UTC.
func Run(ctx context.Context, pool *pgxpool.Pool, slot, table string, consistent pglogrepl.LSN, chunk int, emit func(sink.Row) error) (int64, error) {
	q := `SELECT o.* FROM ` + checkpoint.QuoteTable(table) + ` o JOIN cdc_backfill b ON b.id = o.id AND b.slot = $2
	      WHERE o.status IS DISTINCT FROM 'processed' AND o.id > $1 ORDER BY o.id LIMIT $3`
	return scan(ctx, pool, table, chunk, q, []any{slot}, func(_ *decoder.Relation, id int64, _ []any) sink.Position { return Position(consistent, id) }, emit)
}

// Failed emits rows with status 'failed' (and fewer than maxAttempts
// attempts, when maxAttempts > 0), in id order. A failed row has at least
// one attempt (MarkFailed counts them; migration 0005 counted the original
// worker's): attempts > 0 lets the partial index on failed rows serve the
// query.
//
// Each row keeps the stream position it was rejected at (failed_lsn,
// failed_seq), so that a transaction the stream sends again finds it there;
// rows that never had one (failed under the original polling worker) are
// versioned at LSN 0, outside every stream position. Either way the sink
// must check them by id everywhere (sink.Options.CheckEveryRow).
func Failed(ctx context.Context, pool *pgxpool.Pool, table string, maxAttempts, chunk int, emit func(sink.Row) error) (int64, error) {
	q := `SELECT o.* FROM ` + checkpoint.QuoteTable(table) + ` o
	      WHERE o.attempts > 0 AND o.status = 'failed' AND ($2 <= 0 OR o.attempts < $2) AND o.id > $1 ORDER BY o.id LIMIT $3`
	return scan(ctx, pool, table, chunk, q, []any{maxAttempts}, FailedPosition, emit)
}

// Rows emits the rows whose ids are listed, whatever their status, in id
// order, read and decoded as the backfill reads them: `cdc replay` re-delivers
// rows `cdc verify` found missing, and verify hashes a row's identity with
// them. Ids that are gone are skipped.
func Rows(ctx context.Context, pool *pgxpool.Pool, table string, ids []int64, chunk int,
	pos func(rel *decoder.Relation, id int64, vals []any) sink.Position, emit func(sink.Row) error) (int64, error) {
	q := `SELECT o.* FROM ` + checkpoint.QuoteTable(table) + ` o WHERE o.id = ANY($2) AND o.id > $1 ORDER BY o.id LIMIT $3`
	return scan(ctx, pool, table, chunk, q, []any{ids}, pos, emit)
}

// FailedPosition is where a failed row (values of rel, read as the backfill
// reads them) is stored when it is re-driven: its recorded stream position,
// or (0, id).
func FailedPosition(rel *decoder.Relation, id int64, vals []any) sink.Position {
	li, si := rel.ColumnIndex("failed_lsn"), rel.ColumnIndex("failed_seq")
	if li < 0 || si < 0 {
		return sink.Position{LSN: 0, Seq: uint64(id)}
	}
	text, ok1 := vals[li].(string)
	seq, ok2 := vals[si].(int64)
	lsn, err := pglogrepl.ParseLSN(text)
	if !ok1 || !ok2 || err != nil || lsn == 0 {
		return sink.Position{LSN: 0, Seq: uint64(id)}
	}
	return sink.Position{LSN: uint64(lsn), Seq: uint64(seq)}
}

// pageBytes bounds the bytes of one page of scan. Pages are chunk rows
// (batch.size) while rows are small; with big rows (a 64 KB event_context)
// a 1000-row page would be a 64 MB result the server reads, detoasts and
// sends in one query, so the next page is sized from the bytes per row of
// the last one.
const pageBytes = 4 << 20

// nextPage is the row limit of the page after one of n rows and size bytes:
// at most chunk rows, at most about pageBytes, at least one row.
func nextPage(chunk, n, size int) int {
	if n == 0 || size <= 0 {
		return chunk
	}
	perRow := max(size/n, 1)
	return max(1, min(chunk, pageBytes/perRow))
}

// scan pages through q (keyset on id: $1 is the last id seen, the last
// parameter the page size) and emits each row.
func scan(ctx context.Context, pool *pgxpool.Pool, table string, chunk int, q string, args []any,
	pos func(rel *decoder.Relation, id int64, vals []any) sink.Position, emit func(sink.Row) error) (int64, error) {
	values := decoder.NewValueDecoder()
	schema, name := checkpoint.SplitTable(table)
	var rel *decoder.Relation
	idCol := -1
	var after, sent int64 = -1 << 63, 0
	limit := chunk
	for {
		params := append(append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}, after}, args...), limit)
		rows, err := pool.Query(ctx, q, params...)
		if err != nil {
			return sent, fmt.Errorf("postgres: read rows of %s: %w", table, err)
		}
		n, size := 0, 0
		for rows.Next() {
			if rel == nil {
				fields := rows.FieldDescriptions()
				rel = &decoder.Relation{Namespace: schema, Name: name, Columns: make([]decoder.Column, len(fields))}
				for i, f := range fields {
					rel.Columns[i] = decoder.Column{Name: f.Name, TypeOID: f.DataTypeOID}
				}
				if idCol = rel.ColumnIndex("id"); idCol < 0 {
					rows.Close()
					return sent, fmt.Errorf("postgres: %s has no id column", table)
				}
			}
			raw := rows.RawValues()
			vals := make([]any, len(raw))
			for i, b := range raw {
				if b != nil {
					vals[i] = values.Decode(rel.Columns[i].TypeOID, b)
				}
			}
			id, ok := vals[idCol].(int64)
			if !ok {
				rows.Close()
				return sent, fmt.Errorf("postgres: %s.id is not an integer", table)
			}
			row := sink.Row{Pos: pos(rel, id, vals), ID: id, Relation: rel, Values: vals}
			size += row.Size()
			if err := emit(row); err != nil {
				rows.Close()
				return sent, err
			}
			after = id
			n++
			sent++
		}
		if err := rows.Err(); err != nil {
			return sent, fmt.Errorf("postgres: read rows of %s: %w", table, err)
		}
		if n < limit {
			return sent, nil
		}
		limit = nextPage(chunk, n, size)
	}
}

// MarkDone records that the backfill is complete and drops its list.
func MarkDone(ctx context.Context, pool *pgxpool.Pool, slot string) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: finish backfill: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE cdc_slot_state SET backfill_done = true WHERE slot = $1`, slot); err != nil {
		return fmt.Errorf("postgres: finish backfill: %w", err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM cdc_backfill WHERE slot = $1`, slot); err != nil {
		return fmt.Errorf("postgres: finish backfill: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: finish backfill: %w", err)
	}
	return nil
}
