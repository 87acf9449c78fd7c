package sink

import (
	"context"
	"fmt"

	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Appending: the stream's INSERT kept open across batches.
//
// A backlog streams through many batches. Sent as one INSERT each, they make
// one part each, many per second (ClickHouse advises about one insert per
// second per table); held back until they make one big INSERT, they would be
// held in memory. Append sends a batch's rows into an INSERT left open and
// keeps nothing of them: the server squashes the INSERT's blocks into one
// part (oneBlockInsert), which it stores when Commit ends the INSERT. So a
// backlog goes out as a few large parts while cdc holds only the batch being
// converted, and nothing is stored (nor may be marked) before Commit.
//
// The price is that rows appended are no longer here to send again. When
// Append or Commit fails, the INSERT's outcome is unknown (ClickHouse 18 even
// stores an INSERT whose client went away) and its rows must be read again
// from their source: the caller ends its stream, the next one starts from
// the slot's confirmed position, and Recover waits for the failed INSERT and
// finds what it stored (the high-water mark set here covers every row it
// carried). Rows that need their ids checked (Appendable is false) go
// through Write, which can bisect and retry because it keeps its rows.
type appending struct {
	batch    driver.Batch
	plan     *insertPlan
	cols     []column.Interface
	byColumn bool
	rows     int
	last     Position // of the last row appended
}

// Appendable reports whether rows (a batch in stream order) may be appended
// to an open INSERT: they need no id check, because no earlier attempt can
// have stored any of them (none is at or below the high-water mark, no
// failed insert may still be running, and the sink is not checking every
// row).
func (c *ClickHouse) Appendable(rows []Row) bool {
	return len(rows) > 0 && !c.opts.CheckEveryRow && !c.uncertain && (!c.hasHWM || c.hwm.Less(rows[0].Pos)) &&
		(!c.hasFailedOpen || c.failedOpen.Less(rows[0].Pos))
}

// Appended is how many rows the open INSERT carries (0 when none is open).
func (c *ClickHouse) Appended() int {
	if c.app == nil {
		return 0
	}
	return c.app.rows
}

// Append converts rows and sends them into the open INSERT, opening one if
// needed. Rows whose values do not fit their columns are returned as
// rejected and not sent. An error means the open INSERT was abandoned with
// an unknown outcome: its rows must be sent again from their source (see
// appending).
func (c *ClickHouse) Append(ctx context.Context, rows []Row) ([]Rejected, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	var rejected []Rejected
	good := c.good[:0]
	var blk *block
	defer func() {
		clear(good)
		c.good = good[:0]
		c.releaseBlocks()
	}()
	for _, r := range rows {
		p, err := c.plan(r.Relation)
		if err != nil {
			c.abandon(rows[len(rows)-1].Pos)
			return nil, fmt.Errorf("clickhouse %s: %w", c.addr(), err)
		}
		if blk == nil || blk.plan != p {
			blk = c.newBlock(p)
		}
		idx, err := blk.add(r, c.hasher)
		if err != nil {
			rejected = append(rejected, Rejected{ID: r.ID, Pos: r.Pos, Err: err})
			continue
		}
		good = append(good, convertedRow{id: r.ID, pos: r.Pos, blk: blk, idx: idx})
	}
	for start := 0; start < len(good); {
		end := start + 1
		for end < len(good) && good[end].blk == good[start].blk {
			end++
		}
		if err := c.appendRun(ctx, good[start:end]); err != nil {
			c.abandon(rows[len(rows)-1].Pos)
			return nil, err
		}
		start = end
	}
	if c.app != nil {
		c.app.last = rows[len(rows)-1].Pos
	}
	return rejected, nil
}

// appendRun sends consecutive rows of one block into the open INSERT, in
// data blocks of chunkRows rows or chunkBytes bytes, each sent at once so
// that the server works on them while the next batch is read. Rows of
// another plan (the table's columns changed) end the open INSERT first.
func (c *ClickHouse) appendRun(ctx context.Context, rows []convertedRow) error {
	blk, lo, hi := rows[0].blk, rows[0].idx, rows[len(rows)-1].idx+1
	if c.app != nil && c.app.plan != blk.plan {
		if err := c.Commit(ctx); err != nil {
			return err
		}
	}
	if err := c.fence(); err != nil {
		return err
	}
	if c.app == nil {
		batch, err := c.conn.PrepareBatch(c.insertContext(ctx, true), blk.plan.sql)
		if err != nil {
			return fmt.Errorf("clickhouse %s: prepare insert into %s: %w", c.addr(), c.table(), err)
		}
		cols := batch.Columns()
		c.app = &appending{batch: batch, plan: blk.plan, cols: cols, byColumn: sameColumns(cols, blk.plan.names)}
	}
	a := c.app
	for start, end := lo, lo; start < hi; start = end {
		end = blk.chunkEnd(start, hi)
		if start > lo {
			if err := c.fence(); err != nil {
				return err
			}
		}
		if err := appendRows(a.batch, a.cols, a.byColumn, blk, rows, start, end); err != nil {
			return fmt.Errorf("clickhouse %s: insert into %s: %w", c.addr(), c.table(), err)
		}
		if err := a.batch.Flush(); err != nil {
			return fmt.Errorf("clickhouse %s: insert into %s: send rows: %w", c.addr(), c.table(), err)
		}
		a.rows += end - start
	}
	return nil
}

// Commit ends the open INSERT (if any): once it returns nil, every row
// appended is stored. An error leaves the outcome unknown, as for Append.
func (c *ClickHouse) Commit(ctx context.Context) error {
	a := c.app
	if a == nil {
		return nil
	}
	if err := c.fence(); err != nil {
		c.abandon(a.last)
		return err
	}
	c.app = nil
	if err := a.batch.Send(); err != nil {
		c.app = a
		c.abandon(a.last)
		return fmt.Errorf("clickhouse %s: insert %d rows into %s: %w", c.addr(), a.rows, c.table(), err)
	}
	return nil
}

// Abandon gives up the open INSERT, if any, as after a failure (abandon):
// for a caller that stops appending without committing, such as a stream
// that ended because its lease was lost. Left open, the INSERT would stay
// running on the server, where a successor's Recover waits for it.
func (c *ClickHouse) Abandon() {
	if c.app != nil {
		c.abandon(c.app.last)
	}
}

// abandon gives up the open INSERT after a failure: it may be stored in
// part or in full, now or later, so every row up to last (the last row
// handed to it) is checked by id when it comes again, after the INSERT is
// seen to be over (uncertain). And it may have failed because of one of
// its rows (a value the server refuses): those rows come again through
// Write, which isolates such a row (failedOpen), not into another open
// INSERT that would fail the same way.
func (c *ClickHouse) abandon(last Position) {
	if a := c.app; a != nil {
		c.app = nil
		if !a.batch.IsSent() {
			_ = a.batch.Abort()
		}
		last = maxPosition(last, a.last)
	}
	if !c.hasHWM || c.hwm.Less(last) {
		c.hwm, c.hasHWM = last, true
	}
	if !c.hasFailedOpen || c.failedOpen.Less(last) {
		c.failedOpen, c.hasFailedOpen = last, true
	}
	c.uncertain = true
}

func maxPosition(p, q Position) Position {
	if p.Less(q) {
		return q
	}
	return p
}
