package replication

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// connectWithSlot opens a replication connection to o's database and
// creates o's slot on it; both go when the test ends.
func connectWithSlot(ctx context.Context, t *testing.T, o *testenv.Outbox) *pgconn.PgConn {
	t.Helper()
	conn, err := Connect(ctx, o.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last first: the connection closes, then the slot,
	// no longer active, is dropped.
	t.Cleanup(func() { _, _ = o.PG.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, o.Slot) })
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := CreateSlot(ctx, conn, o.Slot); err != nil {
		t.Fatal(err)
	}
	return conn
}

// lowWater reads the socket's receive low-water mark.
func lowWater(t *testing.T, s *Stream) int {
	t.Helper()
	raw, err := s.conn.Conn().(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		v, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT)
	}); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	return v
}

// A busy stream is read in bulk (the socket wakes the reader per 32 KiB),
// and once it goes quiet a single row arrives without waiting for more: the
// wait that ran out switches back to waking per change.
func TestBulkModeFollowsTheStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := testenv.NewOutbox(t)
	conn := connectWithSlot(ctx, t, o)
	for range 20 {
		o.MustInsert(1000, true)
	}
	st, err := Start(ctx, conn, StartOptions{Slot: o.Slot, Publication: "cdc_outbox"})
	if err != nil {
		t.Fatal(err)
	}
	if lw := lowWater(t, st); lw != 1 {
		t.Fatalf("low-water mark %d before streaming, want 1", lw)
	}

	// inserts counts Insert messages until want, and reports whether the
	// stream was in bulk mode with the socket's mark set at any point.
	inserts := func(want int) (sawBulk bool) {
		got := 0
		for got < want {
			msg, ok, err := st.Receive(ctx, 500*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if st.bulk.on && !sawBulk {
				if lw := lowWater(t, st); lw != bulkLowWater {
					t.Fatalf("bulk mode with a low-water mark of %d, want %d", lw, bulkLowWater)
				}
				sawBulk = true
			}
			if ok && len(msg.Data) > 0 && msg.Data[0] == 'I' {
				got++
			}
			if ctx.Err() != nil {
				t.Fatalf("%d of %d rows received", got, want)
			}
		}
		return sawBulk
	}
	if !inserts(20_000) {
		t.Fatal("20,000 queued rows were read without entering bulk mode")
	}
	if err := st.SendStatus(ctx, pglogrepl.LSN(0)); err != nil {
		t.Fatal(err)
	}

	// Quiet: waits run out and the socket wakes per change again. Then one
	// small row must not wait for a bulk of bytes. On a loaded machine a late
	// burst of the 20,000 rows' messages can still switch bulk mode on, so
	// the quiet-then-one-row round gets three tries; a reader that never
	// switches back fails every one (and the 5 s check below).
	var failures []string
	for try := 1; try <= 3; try++ {
		for deadline := time.Now().Add(5 * time.Second); st.bulk.on; {
			if _, _, err := st.Receive(ctx, 500*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			if time.Now().After(deadline) {
				t.Fatal("still in bulk mode 5s after the stream went quiet")
			}
		}
		if lw := lowWater(t, st); lw != 1 {
			t.Fatalf("low-water mark %d after the stream went quiet, want 1", lw)
		}
		o.MustInsert(1, true)
		start := time.Now()
		sawBulk := inserts(1)
		d := time.Since(start)
		// A behavioural deadline, not a latency measurement: a reader left
		// in bulk mode would wait for 32 KiB that never come.
		switch {
		case sawBulk:
			failures = append(failures, "a single row switched the stream to bulk mode")
		case d > 3*time.Second:
			failures = append(failures, fmt.Sprintf("a single committed row took %v to arrive", d))
		default:
			return
		}
	}
	t.Fatalf("three tries: %v", failures)
}
