package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// While a transaction's rows are buffered (read, not yet in ClickHouse), the
// slot is never confirmed past them (DESIGN §3.1), although the server keeps
// reporting positions beyond them: keepalives, and the transaction's own
// end. This fails at once for a status update whose flush position is not
// the durable LSN (pglogrepl copies write into a flush left 0, §8) and for
// a keepalive position confirmed while rows are in flight.
func TestSlotNeverConfirmedPastBufferedRows(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	cfg := o.Config()
	cfg.Batch.Size = 1000
	cfg.Batch.FlushInterval = time.Hour // nothing flushes these rows in this test
	cfg.Replication.StatusInterval = 200 * time.Millisecond
	r := start(t, cfg)
	r.waitStreaming(t)

	tx, err := o.PG.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
	  SELECT 'order.created', now(), 'test', '{}', g FROM generate_series(1, 300) g`); err != nil {
		t.Fatal(err)
	}
	// Every confirmation below this LSN is of earlier transactions; the
	// commit record, and so the transaction's end, comes after it.
	var before string
	if err := tx.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "300 rows buffered", 30*time.Second, func() bool { return testutil.ToFloat64(r.m.BufferRows) == 300 })

	// Load the server while we watch: WAL of another table moves the
	// walsender's position (and its keepalives) well past the rows.
	if _, err := o.PG.Exec(ctx, `CREATE TABLE busy (id bigserial PRIMARY KEY, payload text)`); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		if _, err := o.PG.Exec(ctx, `INSERT INTO busy (payload) SELECT repeat('x', 200) FROM generate_series(1, 100)`); err != nil {
			t.Fatal(err)
		}
		var passed bool
		var confirmed string
		if err := o.PG.QueryRow(ctx, `SELECT confirmed_flush_lsn > $2::pg_lsn, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`,
			cfg.Postgres.Slot, before).Scan(&passed, &confirmed); err != nil {
			t.Fatal(err)
		}
		if passed {
			t.Fatalf("slot confirmed to %s, past the buffered transaction (it starts before %s); no row of it is in ClickHouse", confirmed, before)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n, _ := o.CHCount(); n != 0 {
		t.Fatalf("ClickHouse has %d rows: the test's rows were meant to stay buffered", n)
	}
}
