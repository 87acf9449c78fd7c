// Package checkpoint records what has been delivered: it marks outbox rows
// processed or failed in PostgreSQL, and decides which LSN may be confirmed
// to the replication slot (Confirmer).
//
// The order is the invariant: a transaction's end LSN becomes durable only
// after every one of its rows is in ClickHouse and marked here. The stream
// confirms what Confirmer allows: the durable LSN, or a keepalive's position
// when no row is buffered or in flight, never backwards.
package checkpoint

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

// Failure is a row ClickHouse rejected, with its stream position (LSN 0
// when it has none): a re-drive stores it there, where a re-sent
// transaction looks for it.
type Failure struct {
	ID    int64
	Error string
	LSN   pglogrepl.LSN
	Seq   uint64
}

// Store marks outbox rows.
type Store struct {
	pool  *pgxpool.Pool
	table string // quoted, schema-qualified
	fence []Term
	// db runs the marking statements: the pool, or a Marking's transaction.
	db querier
}

// querier is what runs a marking statement: a pool or a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Term is a lease (a row of cdc_lease) and the term its holder was given.
type Term struct {
	Lease string
	Term  int64
}

// ErrFenced means a marking was refused because a successor holds one of
// the store's leases: this process must write nothing more.
var ErrFenced error = fencedError("marking refused: a successor holds the lease")

type fencedError string

func (e fencedError) Error() string { return string(e) }

// Permanent tells retry loops to give up at once.
func (fencedError) Permanent() bool { return true }

// NewStore marks rows of table ("schema.name" or "name") through pool.
func NewStore(pool *pgxpool.Pool, table string) *Store {
	return &Store{pool: pool, table: QuoteTable(table), db: pool}
}

// Fenced returns a store whose markings happen only while every given
// lease still has the given term: a holder whose lease was taken over marks
// nothing more, whatever its clock says (ErrFenced).
func (s *Store) Fenced(terms ...Term) *Store {
	f := *s
	f.fence = append(slices.Clone(s.fence), terms...)
	return &f
}

// exec runs a marking statement q (an UPDATE ending in its WHERE clause),
// with its conditions checked inside it, on the snapshot the update itself
// uses: the fence (a term taken over before the statement started refuses
// it: ErrFenced) and, when xids are given, their visibility (the update
// does nothing unless every one of those transactions is visible to it:
// visible is false).
func (s *Store) exec(ctx context.Context, xids []uint32, q string, args ...any) (visible bool, err error) {
	if len(s.fence) == 0 && len(xids) == 0 {
		_, err := s.db.Exec(ctx, q, args...)
		return err == nil, err
	}
	var ctes []string
	fenceOK, visibleOK := "true", "true"
	if len(s.fence) > 0 {
		names := make([]string, len(s.fence))
		terms := make([]int64, len(s.fence))
		for i, t := range s.fence {
			names[i], terms[i] = t.Lease, t.Term
		}
		args = append(args, names, terms)
		ctes = append(ctes, fmt.Sprintf(`fence AS (SELECT count(*) = %d AS ok FROM cdc_lease l
	    JOIN unnest($%d::text[], $%d::bigint[]) AS f(name, term) ON l.name = f.name AND l.term = f.term)`,
			len(s.fence), len(args)-1, len(args)))
		fenceOK = "(SELECT ok FROM fence)"
	}
	if len(xids) > 0 {
		wide := make([]int64, len(xids))
		for i, x := range xids {
			wide[i] = int64(x)
		}
		args = append(args, wide)
		ctes = append(ctes, visibleCTE(len(args)))
		visibleOK = "(SELECT ok FROM visible)"
	}
	stmt := fmt.Sprintf(`WITH %s,
	  marked AS (%s AND %s AND %s RETURNING 1)
	SELECT %s, %s`, strings.Join(ctes, ",\n\t  "), q, fenceOK, visibleOK, fenceOK, visibleOK)
	var ok bool
	if err := s.db.QueryRow(ctx, stmt, args...).Scan(&ok, &visible); err != nil {
		return false, err
	}
	if !ok {
		return false, ErrFenced
	}
	return visible, nil
}

// visibleCTE says whether every transaction of parameter param, a bigint[]
// of 32-bit xids, is visible to the statement's snapshot, which
// pg_current_snapshot() returns (the active one: the update's).
func visibleCTE(param int) string {
	return `visible AS (SELECT coalesce(bool_and(pg_visible_in_snapshot(` + widenXid("x.xid", "r.ref") + `, r.snap)), true) AS ok
	    FROM (SELECT pg_current_snapshot() AS snap, pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS ref) r,
	      unnest($` + strconv.Itoa(param) + `::bigint[]) AS x(xid))`
}

// widenXid is the SQL for the xid8 whose low 32 bits are the bigint
// expression xid and which is nearest the bigint expression ref (a
// snapshot's xmax): the stream's transactions are recent, far within 2^31
// of it, whatever the epoch.
func widenXid(xid, ref string) string {
	return fmt.Sprintf("(%[2]s + ((%[1]s - %[2]s %% 4294967296) %% 4294967296 + 6442450944) %% 4294967296 - 2147483648)::text::xid8", xid, ref)
}

// markVisible runs a marking statement once every transaction of xids is
// visible to it. PostgreSQL decodes a transaction as soon as its commit
// record is flushed, but shows its rows to other sessions only when the
// committing backend is done, after its wait for a synchronous standby
// (and any scheduling delay): cdc can receive, insert and mark a
// transaction in between. An update whose snapshot does not see the rows
// skips them without an error, the slot then moves past them, and they stay
// pending forever while ClickHouse has them. So the marking retries, with a
// new snapshot each time, until it sees them all; the wait ends when the
// commit does (or with ctx). Rows of the backfill and of re-drives are read
// from a snapshot, so they come with no xids.
func (s *Store) markVisible(ctx context.Context, xids []uint32, q string, args ...any) error {
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		visible, err := s.exec(ctx, xids, q, args...)
		if err != nil || visible {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for the rows' transactions to become visible: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// MarkProcessed sets status 'processed' on the given rows in one statement,
// once the transactions xids (those the rows were streamed from; nil for
// rows read from a snapshot) are visible to it (markVisible).
// Rows already processed are left alone, so re-delivery after a crash costs
// no extra WAL. The statement sets no indexed column, so it stays a HOT
// update (see migration 0005).
func (s *Store) MarkProcessed(ctx context.Context, ids []int64, xids []uint32) error {
	if len(ids) == 0 {
		return nil
	}
	q, args := markProcessedQuery(s.table, ids)
	if err := s.markVisible(ctx, xids, q, args...); err != nil {
		return fmt.Errorf("postgres: mark %d rows processed in %s: %w", len(ids), s.table, err)
	}
	return nil
}

// Runs of consecutive ids at least minRunLen long are named by their bounds,
// at most maxRuns of them; the other ids go in one array. A batch is mostly a
// few long runs (producers' transactions commit in id order), and
// `id BETWEEN lo AND hi` walks the primary key once per run where
// `id = ANY(ids)` descends it once per id: about a third less CPU per row for
// the marking backend. Each BETWEEN and the ANY are estimated from the values
// (pgx plans with them), so the plan stays on the primary key however big the
// outbox is.
const (
	minRunLen = 16
	maxRuns   = 8
)

// markProcessedQuery returns the marking statement for ids and its arguments.
func markProcessedQuery(table string, ids []int64) (string, []any) {
	lo, hi, rest := splitRuns(ids)
	var where strings.Builder
	args := make([]any, 0, 2*len(lo)+1)
	for i := range lo {
		if i > 0 {
			where.WriteString(" OR ")
		}
		args = append(args, lo[i], hi[i])
		fmt.Fprintf(&where, "id BETWEEN $%d AND $%d", len(args)-1, len(args))
	}
	if len(rest) > 0 {
		if len(lo) > 0 {
			where.WriteString(" OR ")
		}
		args = append(args, rest)
		fmt.Fprintf(&where, "id = ANY($%d::bigint[])", len(args))
	}
	return `UPDATE ` + table + ` SET status = 'processed', updated_at = now(), last_error = NULL
	      WHERE (` + where.String() + `) AND status IS DISTINCT FROM 'processed'`, args
}

// splitRuns sorts and deduplicates ids and returns the longest runs of
// consecutive values (inclusive bounds lo[i]..hi[i], every value in them is
// one of ids; at most maxRuns, each at least minRunLen long, in ascending
// order) and the ids in no returned run. ids is not modified.
func splitRuns(ids []int64) (lo, hi, rest []int64) {
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	type run struct{ start, end int } // indexes into sorted, end exclusive
	var runs []run
	for i := 0; i < len(sorted); {
		j := i + 1
		for j < len(sorted) && sorted[j] == sorted[j-1]+1 {
			j++
		}
		if j-i >= minRunLen {
			runs = append(runs, run{i, j})
		}
		i = j
	}
	if len(runs) > maxRuns {
		slices.SortStableFunc(runs, func(a, b run) int { return (b.end - b.start) - (a.end - a.start) })
		runs = runs[:maxRuns]
		slices.SortFunc(runs, func(a, b run) int { return a.start - b.start })
	}
	next := 0
	for _, r := range runs {
		rest = append(rest, sorted[next:r.start]...)
		lo, hi = append(lo, sorted[r.start]), append(hi, sorted[r.end-1])
		next = r.end
	}
	rest = append(rest, sorted[next:]...)
	return lo, hi, rest
}

// MarkFailed sets status 'failed', the error text, one more attempt and the
// stream position (when it has one) on rows ClickHouse rejected, once the
// transactions xids are visible to it (as MarkProcessed: an update that
// skipped an invisible rejected row would leave it pending, in neither
// place).
func (s *Store) MarkFailed(ctx context.Context, failures []Failure, xids []uint32) error {
	if len(failures) == 0 {
		return nil
	}
	ids := make([]int64, len(failures))
	msgs := make([]string, len(failures))
	lsns := make([]string, len(failures))
	seqs := make([]int64, len(failures))
	for i, f := range failures {
		ids[i], msgs[i], lsns[i], seqs[i] = f.ID, f.Error, f.LSN.String(), int64(f.Seq)
	}
	q := `UPDATE ` + s.table + ` AS o SET status = 'failed', last_error = f.err, attempts = o.attempts + 1, updated_at = now(),
	        failed_lsn = CASE WHEN f.lsn = '0/0' THEN o.failed_lsn ELSE f.lsn END,
	        failed_seq = CASE WHEN f.lsn = '0/0' THEN o.failed_seq ELSE f.seq END
	      FROM unnest($1::bigint[], $2::text[], $3::pg_lsn[], $4::bigint[]) AS f(id, err, lsn, seq) WHERE o.id = f.id`
	if err := s.markVisible(ctx, xids, q, ids, msgs, lsns, seqs); err != nil {
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
