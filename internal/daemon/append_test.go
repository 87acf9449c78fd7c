package daemon

import (
	"context"
	"regexp"
	"strconv"
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

// A restart's backlog goes into an INSERT kept open however slowly the
// walsender sends it. Here each of its rows was committed with 2,000 rows
// of a table cdc does not stream, so they arrive slower than the rate a live
// stream's batches must reach to count as a backlog's (batch.size per
// flush_interval/20); they were in the WAL when the stream began
// (replication.Stream.ServerEnd), and that makes them a backlog all the
// same. Before, the stream took the slot's start position (its first
// message, a keepalive) for the server's end of WAL, and inserted every
// batch of such a backlog on its own.
func TestSlowBacklogIsAppended(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	cfg := o.Config()
	cfg.Batch.Size = 100
	cfg.Batch.FlushInterval = time.Second // a live backlog: >= 2,000 rows/s
	r := start(t, cfg)
	r.waitStreaming(t)
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if _, err := o.PG.Exec(ctx, `CREATE TABLE filler (n int, pad text)`); err != nil {
		t.Fatal(err)
	}
	const rows = 600
	for range rows {
		if _, err := o.PG.Exec(ctx, `WITH f AS (INSERT INTO filler SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g)
		  INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
		  VALUES ('order.created', now(), 'test', '{}', 1)`); err != nil {
			t.Fatal(err)
		}
	}
	r, logs := startLogged(t, cfg)
	started := time.Now()
	o.WaitCH(rows, time.Minute)
	took := time.Since(started)
	most := 0
	for _, m := range regexp.MustCompile(`msg=inserted .* batches=(\d+)`).FindAllStringSubmatch(logs.String(), -1) {
		n, _ := strconv.Atoi(m[1])
		most = max(most, n)
	}
	if most < 2 {
		t.Errorf("%d rows caught up on in %s (%.0f rows/s): no INSERT carried more than %d batch(es), want the backlog appended\n%s",
			rows, took, rows/took.Seconds(), most, logs)
	}
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
}
