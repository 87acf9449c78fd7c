package sink

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// Batches appended to an open INSERT are stored together, as one part, and
// only when it is committed: before that nothing of them is visible (so
// nothing of them may be marked processed).
func TestAppendedBatchesAreOnePartAtCommit(t *testing.T) {
	ctx := context.Background()
	s, db := openTestSink(t)
	if err := s.conn.Exec(ctx, fmt.Sprintf("SYSTEM STOP MERGES `%s`.events", db)); err != nil {
		t.Fatal(err)
	}
	const batches, per = 3, 2*chunkRows + 7
	for i := range batches {
		rows := rowsAt(uint64(100+i), seqIDs(int64(1+i*per), per)...)
		if !s.Appendable(rows) {
			t.Fatalf("batch %d: not appendable on a fresh sink", i)
		}
		rejected, err := s.Append(ctx, rows)
		if err != nil || len(rejected) != 0 {
			t.Fatalf("append batch %d: rejected %v, err %v", i, rejected, err)
		}
	}
	if got := s.Appended(); got != batches*per {
		t.Errorf("Appended() = %d, want %d", got, batches*per)
	}
	if n, _ := count(t, s); n != 0 {
		t.Errorf("count() = %d before Commit, want 0", n)
	}
	if err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, u := count(t, s); n != batches*per || u != n {
		t.Errorf("count() %d, uniqExact(id) %d, want %d each", n, u, batches*per)
	}
	var parts uint64
	if err := s.conn.QueryRow(ctx, "SELECT count() FROM system.parts WHERE database = ? AND table = 'events' AND active", db).Scan(&parts); err != nil {
		t.Fatal(err)
	}
	if parts != 1 {
		t.Errorf("%d parts, want 1 (one INSERT)", parts)
	}
	if s.Appended() != 0 {
		t.Errorf("Appended() = %d after Commit, want 0", s.Appended())
	}
}

// A row whose value does not fit its column is returned as rejected and not
// sent; the others go in.
func TestAppendRejectsUnconvertibleRows(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestSink(t)
	rows := rowsAt(300, 1, 2, 3, 4)
	rows[2].Values[2] = time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC) // DateTime cannot hold it
	rejected, err := s.Append(ctx, rows)
	if err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 1 || rejected[0].ID != 3 || rejected[0].Err == nil {
		t.Fatalf("rejected %+v, want row 3 with its reason", rejected)
	}
	if err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := count(t, s); n != 3 {
		t.Errorf("count() = %d, want 3", n)
	}
}

// An open INSERT that fails leaves its outcome unknown (ClickHouse 18 may
// store an INSERT whose client went away): every row it carried must be
// checked by id when it comes again, and nothing is appended until the
// failed INSERT is known to be over. Without that, the rows re-read from the
// slot are stored twice.
func TestAbandonedAppendIsCheckedByIDWhenSentAgain(t *testing.T) {
	for _, failAt := range []string{"append", "commit"} {
		t.Run(failAt, func(t *testing.T) {
			ctx := context.Background()
			s, _ := openTestSink(t)
			first := rowsAt(500, seqIDs(1, chunkRows+10)...)
			second := rowsAt(501, seqIDs(2000, 50)...)
			if _, err := s.Append(ctx, first); err != nil {
				t.Fatal(err)
			}
			lost := errors.New("lease lost")
			s.opts.Fence = func() error { return lost }
			var err error
			if failAt == "append" {
				_, err = s.Append(ctx, second)
			} else {
				err = s.Commit(ctx)
			}
			if !errors.Is(err, lost) {
				t.Fatalf("err = %v, want the fence's", err)
			}
			s.opts.Fence = nil
			if s.Appended() != 0 {
				t.Errorf("Appended() = %d after the failure, want 0 (abandoned)", s.Appended())
			}
			if s.Appendable(first) || s.Appendable(second) {
				t.Error("rows the failed INSERT carried are appendable: they would not be checked by id")
			}
			// What the next stream does: recover from the slot's position
			// and send the same rows again.
			if err := s.Recover(ctx, 400); err != nil {
				t.Fatal(err)
			}
			again := append(append([]Row{}, first...), second...)
			stored, _ := count(t, s)
			if s.Appendable(again) {
				t.Fatalf("rows of the failed INSERT are appendable after Recover (%d of them stored): a row the server refuses would fail every open INSERT again", stored)
			}
			res, err := s.Write(ctx, again)
			if err != nil {
				t.Fatal(err)
			}
			n, u := count(t, s)
			if n != u || n != uint64(len(again)) {
				t.Errorf("count() %d, uniqExact(id) %d, want %d each (the failed INSERT stored %d; rewrite %+v)", n, u, len(again), stored, res)
			}
			later := rowsAt(600, 9000)
			if !s.Appendable(later) {
				t.Error("rows above everything sent are not appendable after the rewrite")
			}
		})
	}
}

// Write refuses to run while an appended INSERT is open: its rows would
// be stored before the open ones, and the id check could not see them.
func TestWriteWhileAppendingIsRefused(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestSink(t)
	if _, err := s.Append(ctx, rowsAt(100, 1, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, rowsAt(101, 3)); err == nil {
		t.Error("Write with an open INSERT succeeded")
	}
	if err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(ctx, rowsAt(101, 3)); err != nil {
		t.Error(err)
	}
}

// Abandon ends the open INSERT on the server too. A stream that stopped
// appending (its lease lost) and left it open kept it running there, and
// the successor's Recover waited for it (TestLeaderChangeDuringStreaming:
// 3 minutes, until the test gave up).
func TestAbandonEndsTheInsertOnTheServer(t *testing.T) {
	ctx := context.Background()
	s, db := openTestSink(t)
	if _, err := s.Append(ctx, rowsAt(100, seqIDs(1, 10)...)); err != nil {
		t.Fatal(err)
	}
	running := func() uint64 {
		var n uint64
		if err := s.conn.QueryRow(ctx, "SELECT count() FROM system.processes WHERE startsWith(query, 'INSERT') AND position(query, ?) > 0", db).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if running() == 0 {
		t.Fatal("no INSERT running while one is open: the test proves nothing")
	}
	s.Abandon()
	for deadline := time.Now().Add(10 * time.Second); running() > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the abandoned INSERT still runs on the server after 10s")
		}
	}
	if s.Appended() != 0 || s.Appendable(rowsAt(100, 5)) {
		t.Errorf("after Abandon: %d rows appended, rows it carried appendable %v; want 0 and false (checked by id when they come again)",
			s.Appended(), s.Appendable(rowsAt(100, 5)))
	}
}
