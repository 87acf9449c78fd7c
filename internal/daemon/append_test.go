package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// A backlog goes into an INSERT kept open across its batches. When that
// INSERT fails because the server refuses one of its rows, the rows it
// carried are read again from the slot and go through the insert that
// isolates a rejected row: the poison row is marked failed, every other row
// is delivered once, and the stream goes on. Without that, the rows came
// back into another open INSERT that failed the same way, forever.
func TestPoisonRowInABacklogIsIsolated(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	addPoisonGuard(t, o)
	cfg := o.Config()
	cfg.Batch.Size = 100
	cfg.Batch.FlushInterval = time.Second
	r, logs := startLogged(t, cfg)
	r.waitStreaming(t)

	// One statement, one transaction: its rows arrive as fast as the slot sends them.
	if _, err := o.PG.Exec(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
	  SELECT CASE WHEN g IN (2500, 2501) THEN 'poison' ELSE 'order.created' END, now(), 'test', ('{"n": ' || g || '}')::jsonb, 1
	  FROM generate_series(1, 5000) g`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the poison rows failed and the others processed", 30*time.Second, func() bool {
		c := o.StatusCounts()
		return c["failed"] == 2 && c["processed"] == 4998
	})
	if n, uniq := o.CHCount(); n != 4998 || uniq != n {
		t.Errorf("ClickHouse count %d uniq %d, want 4998", n, uniq)
	}
	if logs.count("kept open across a backlog's batches failed") == 0 {
		t.Fatalf("no INSERT kept open failed: the backlog did not go into one, the test proves nothing\n%s", logs)
	}
	more := o.MustInsert(10, true)
	o.WaitCH(4998+uint64(len(more)), 30*time.Second)
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
}
