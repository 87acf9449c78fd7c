// Package checkpoint records what has been delivered: it marks outbox rows
// processed or failed in PostgreSQL, and tracks the LSN that is safe to
// confirm to the replication slot.
//
// The order is the invariant: a transaction's end LSN becomes safe only after
// every one of its rows is in ClickHouse and marked here. The replication
// stream reads Tracker.Durable and never confirms past it.
package checkpoint

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Tracker holds the durable LSN: the end of the latest transaction whose rows
// are all delivered and marked. It only moves forward. Safe for concurrent use.
type Tracker struct {
	durable atomic.Uint64
}

// NewTracker starts at the slot's confirmed position.
func NewTracker(start pglogrepl.LSN) *Tracker {
	t := &Tracker{}
	t.durable.Store(uint64(start))
	return t
}

// Advance moves the durable LSN to lsn if that is further.
func (t *Tracker) Advance(lsn pglogrepl.LSN) {
	for {
		cur := t.durable.Load()
		if uint64(lsn) <= cur || t.durable.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// Durable returns the LSN that may be confirmed to the slot.
func (t *Tracker) Durable() pglogrepl.LSN { return pglogrepl.LSN(t.durable.Load()) }

// Failure is a row ClickHouse rejected.
type Failure struct {
	ID    int64
	Error string
}

// Store marks outbox rows.
type Store struct {
	pool  *pgxpool.Pool
	table string // quoted, schema-qualified
}

// NewStore marks rows of table ("schema.name" or "name") through pool.
func NewStore(pool *pgxpool.Pool, table string) *Store {
	return &Store{pool: pool, table: QuoteTable(table)}
}

// MarkProcessed sets status 'processed' on the given rows in one statement.
// Rows already processed are left alone, so re-delivery after a crash costs
// no extra WAL. The statement sets no indexed column, so it stays a HOT
// update (see migration 0005). `id = ANY($1)` lets the planner estimate the
// rows exactly (a range join over id would be estimated at a fraction of
// the table, enough on a big outbox to make PostgreSQL JIT-compile every
// marking).
func (s *Store) MarkProcessed(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	q := `UPDATE ` + s.table + ` SET status = 'processed', updated_at = now(), last_error = NULL
	      WHERE id = ANY($1::bigint[]) AND status IS DISTINCT FROM 'processed'`
	if _, err := s.pool.Exec(ctx, q, ids); err != nil {
		return fmt.Errorf("postgres: mark %d rows processed in %s: %w", len(ids), s.table, err)
	}
	return nil
}

// MarkFailed sets status 'failed', the error text and one more attempt on
// rows ClickHouse rejected.
func (s *Store) MarkFailed(ctx context.Context, failures []Failure) error {
	if len(failures) == 0 {
		return nil
	}
	ids := make([]int64, len(failures))
	msgs := make([]string, len(failures))
	for i, f := range failures {
		ids[i], msgs[i] = f.ID, f.Error
	}
	q := `UPDATE ` + s.table + ` AS o SET status = 'failed', last_error = f.err, attempts = o.attempts + 1, updated_at = now()
	      FROM unnest($1::bigint[], $2::text[]) AS f(id, err) WHERE o.id = f.id`
	if _, err := s.pool.Exec(ctx, q, ids, msgs); err != nil {
		return fmt.Errorf("postgres: mark %d rows failed in %s: %w", len(ids), s.table, err)
	}
	return nil
}

// DeleteProcessed deletes up to limit rows that were marked processed more
// than olderThan ago. It never touches pending or failed rows, and skips
// rows locked by someone else rather than waiting for them.
func (s *Store) DeleteProcessed(ctx context.Context, olderThan time.Duration, limit int) (int64, error) {
	q := `DELETE FROM ` + s.table + ` WHERE id IN (
	        SELECT id FROM ` + s.table + ` WHERE status = 'processed' AND updated_at < (now() AT TIME ZONE 'utc') - $1::interval
	        ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)`
	tag, err := s.pool.Exec(ctx, q, olderThan, limit)
	if err != nil {
		return 0, fmt.Errorf("postgres: delete processed rows from %s: %w", s.table, err)
	}
	return tag.RowsAffected(), nil
}

// QuoteTable quotes "schema.name" (or "name") as a PostgreSQL identifier.
func QuoteTable(table string) string {
	schema, name := SplitTable(table)
	return pgx.Identifier{schema, name}.Sanitize()
}

// SplitTable splits "schema.name", defaulting the schema to public.
func SplitTable(table string) (schema, name string) {
	for i := 0; i < len(table); i++ {
		if table[i] == '.' {
			return table[:i], table[i+1:]
		}
	}
	return "public", table
}
