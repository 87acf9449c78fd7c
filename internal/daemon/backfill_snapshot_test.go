package daemon

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/backfill"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/replication"
)

// The backfill list is read in the snapshot the slot exported (DESIGN §3.4,
// §8): a producer transaction open while the slot is created and committed
// just after it is in the stream, so the list must leave its rows out, and
// they are delivered once. Read outside the snapshot, the list names them
// too: the backfill delivers them, the stream again.
func TestBackfillListIsReadInTheSlotSnapshot(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	cfg := o.Config()
	before := o.MustInsert(50, true) // pending before the slot exists

	producer, err := o.PG.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Rollback(ctx)
	if _, err := producer.Exec(ctx, `SELECT 1`); err != nil { // open, and holds no xid the slot would wait for
		t.Fatal(err)
	}
	conn, err := replication.Connect(ctx, cfg.Postgres.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	created, err := replication.CreateSlot(ctx, conn, cfg.Postgres.Slot)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := producer.Query(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
	  SELECT 'order.created', now(), 'test', '{}', g FROM generate_series(1, 20) g RETURNING id`)
	if err != nil {
		t.Fatal(err)
	}
	after, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	if err := producer.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// As the daemon does it, while the creating connection is idle.
	n, err := backfill.Prepare(ctx, o.PG, cfg.Postgres.Slot, cfg.Postgres.Table, created.Snapshot, created.ConsistentPoint)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	rows, err = o.PG.Query(ctx, `SELECT id FROM cdc_backfill WHERE slot = $1 ORDER BY id`, cfg.Postgres.Slot)
	if err != nil {
		t.Fatal(err)
	}
	listed, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(listed, before) || n != int64(len(before)) {
		t.Fatalf("backfill list %v (%d rows), want the %d rows that predate the slot %v; the producer's rows %v come through the stream",
			listed, n, len(before), before, after)
	}

	// The daemon finds the slot with its list: backfill, then stream.
	r := start(t, cfg)
	want := append(slices.Clone(before), after...)
	waitFor(t, "every row processed", 60*time.Second, func() bool { return o.StatusCounts()["processed"] == int64(len(want)) })
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	o.AssertExactlyOnce(want, nil)
}
