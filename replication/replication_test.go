package replication

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// ServerEnd separates the backlog from what comes after: rows committed
// before the stream started lie before it, rows committed afterwards after
// it. The stream's first message (a keepalive with the slot's start
// position) cannot tell this, so the daemon took every backlog for a live
// stream.
func TestServerEndSeparatesTheBacklog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := testenv.NewOutbox(t)
	conn := connectWithSlot(ctx, t, o)
	const n = 50
	for range n {
		o.MustInsert(1, true)
	}
	// The test server commits asynchronously: a synchronous commit that
	// writes (a message) flushes the backlog's WAL. The walsender, too,
	// sends only flushed WAL.
	tx, err := o.PG.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = on; SELECT pg_logical_emit_message(true, 'cdc-test', 'flush')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := Start(ctx, conn, StartOptions{Slot: o.Slot, Publication: "cdc_outbox"})
	if err != nil {
		t.Fatal(err)
	}
	end := st.ServerEnd()
	o.MustInsert(n, true)
	var before, after int
	for before+after < 2*n {
		msg, ok, err := st.Receive(ctx, 500*time.Millisecond)
		if err != nil {
			t.Fatalf("after %d+%d rows: %v", before, after, err)
		}
		if !ok || msg.Keepalive || len(msg.Data) == 0 || msg.Data[0] != 'I' {
			continue
		}
		if msg.WALStart < end {
			before++
		} else {
			after++
		}
	}
	if before != n || after != n {
		t.Errorf("server end %s: %d rows before it and %d after, want %d and %d", end, before, after, n, n)
	}
}
