package checkpoint

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Marking is a transaction of MarkProcessed statements kept open while the
// rows' INSERT into ClickHouse is (the stream's INSERT kept open across
// batches): the markings are done while the rows are still being sent, and
// committed once the INSERT is, so that the marking of a large INSERT does
// not start only when it ends. Until Commit nothing of it is visible, so a
// row is never seen processed before it is stored; Rollback (or a crash)
// leaves every row as it was.
//
// Each statement checks the store's fence and waits for its rows'
// transactions to be visible, as Store.MarkProcessed does (READ COMMITTED:
// every statement sees what is committed when it starts). Its row locks are
// held until Commit: nothing else updates a pending row (re-drives take
// failed rows, SKIP LOCKED).
type Marking struct {
	tx    pgx.Tx
	store Store
	rows  int
}

// BeginMarking opens a Marking on a connection of its own.
func (s *Store) BeginMarking(ctx context.Context) (*Marking, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: begin marking of %s: %w", s.table, err)
	}
	m := &Marking{tx: tx, store: *s}
	m.store.db = tx
	return m, nil
}

// MarkProcessed marks rows processed inside the transaction (see
// Store.MarkProcessed). After an error the Marking is unusable: roll it back.
func (m *Marking) MarkProcessed(ctx context.Context, ids []int64, xids []uint32) error {
	if err := m.store.MarkProcessed(ctx, ids, xids); err != nil {
		return err
	}
	m.rows += len(ids)
	return nil
}

// Commit makes the markings visible and durable. A fenced Marking first
// checks its terms again and locks their lease rows until the commit, so a
// successor's takeover comes either before (the Marking is refused:
// ErrFenced, and rolled back) or after it.
func (m *Marking) Commit(ctx context.Context) error {
	if fence := m.store.fence; len(fence) > 0 {
		names := make([]string, len(fence))
		terms := make([]int64, len(fence))
		for i, t := range fence {
			names[i], terms[i] = t.Lease, t.Term
		}
		tag, err := m.tx.Exec(ctx, `SELECT 1 FROM cdc_lease l
		    JOIN unnest($1::text[], $2::bigint[]) AS f(name, term) ON l.name = f.name AND l.term = f.term
		    FOR SHARE OF l`, names, terms)
		if err != nil {
			return fmt.Errorf("postgres: commit marking of %d rows in %s: check the lease: %w", m.rows, m.store.table, err)
		}
		if tag.RowsAffected() != int64(len(fence)) {
			_ = m.Rollback(ctx)
			return ErrFenced
		}
	}
	if err := m.tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: commit marking of %d rows in %s: %w", m.rows, m.store.table, err)
	}
	return nil
}

// Rollback undoes the markings; after Commit it does nothing.
func (m *Marking) Rollback(ctx context.Context) error {
	if err := m.tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("postgres: roll back marking of %s: %w", m.store.table, err)
	}
	return nil
}
