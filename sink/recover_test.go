package sink

import (
	"context"
	"testing"
	"time"
)

// An INSERT whose client is gone (a killed predecessor, or our own attempt
// whose connection dropped) can still be running on the server and add its
// rows after a restarted sink looked at what is stored. Recover must wait for
// it: reading the high-water mark first, the restarted sink finds nothing and
// inserts the same rows again (DESIGN §3.2).
func TestRecoverWaitsForARunningInsert(t *testing.T) {
	ctx := context.Background()
	old, _ := openTestSink(t)
	first := rowsAt(1000, seqIDs(1, 10)...)

	// The predecessor's INSERT, on its own connection: its data block is
	// sent, so the server runs it, but it ends only 1.5 s later.
	p, err := old.plan(outboxRel)
	if err != nil {
		t.Fatal(err)
	}
	blk := old.newBlock(p)
	conv := make([]convertedRow, len(first))
	for i, r := range first {
		idx, err := blk.add(r, old.hasher)
		if err != nil {
			t.Fatal(err)
		}
		conv[i] = convertedRow{id: r.ID, pos: r.Pos, blk: blk, idx: idx}
	}
	batch, err := old.conn.PrepareBatch(ctx, p.sql)
	if err != nil {
		t.Fatal(err)
	}
	if err := appendRows(batch, batch.Columns(), sameColumns(batch.Columns(), p.names), blk, conv, 0, len(conv)); err != nil {
		t.Fatal(err)
	}
	if err := batch.Flush(); err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		time.Sleep(1500 * time.Millisecond)
		sent <- batch.Send()
	}()

	// Meanwhile the successor starts, recovers and re-sends an overlapping
	// range (the stream from the slot's confirmed position, below the rows).
	s := reopen(t, old)
	began := time.Now()
	if err := s.Recover(ctx, 900); err != nil {
		t.Fatal(err)
	}
	t.Logf("Recover returned after %s", time.Since(began).Round(time.Millisecond))
	res, err := s.Write(ctx, rowsAt(1000, seqIDs(1, 15)...))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("the predecessor's INSERT failed, so the test proves nothing: %v", err)
	}
	if n, u := count(t, s); n != u || n != 15 {
		t.Errorf("count() %d, uniqExact(id) %d, want 15 each (successor: %+v)", n, u, res)
	}
}
