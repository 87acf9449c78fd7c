package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/backfill"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/replication"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// A slot created again for an outbox that had one (a lost or dropped slot,
// or a PostgreSQL failover that did not carry the slot) must recognise the
// rows the old slot delivered but never marked, on its first backfill.
func TestRecreatedSlotBackfillRecognisesDeliveredRows(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	cfg := o.Config()
	r := start(t, cfg)
	r.waitStreaming(t)
	ids := o.MustInsert(500, true)
	o.WaitCH(500, 60*time.Second)
	waitFor(t, "rows marked", 30*time.Second, func() bool { return o.StatusCounts()["processed"] == 500 })
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	// As if the old slot's daemon died after inserting the last 200 rows
	// but before marking them, and the slot was then lost.
	if _, err := o.PG.Exec(ctx, `UPDATE event_outbox SET status = 'pending' WHERE id > $1`, ids[299]); err != nil {
		t.Fatal(err)
	}
	// The walsender of the stopped daemon leaves the slot a moment after
	// the daemon closed its connection.
	waitSlotReleased(t, o, cfg.Postgres.Slot)
	if err := replication.DropSlot(ctx, o.PG, cfg.Postgres.Slot); err != nil {
		t.Fatal(err)
	}
	more := o.MustInsert(100, true) // pending too, not yet delivered
	r2 := start(t, o.Config())
	o.WaitCH(600, 60*time.Second)
	waitFor(t, "every row processed", 60*time.Second, func() bool { return o.StatusCounts()["processed"] == 600 })
	after := o.MustInsert(10, true)
	waitFor(t, "streamed rows processed", 60*time.Second, func() bool { return o.StatusCounts()["processed"] == 610 })
	if err := r2.shutdown(t); err != nil {
		t.Fatal(err)
	}
	o.AssertExactlyOnce(append(append(ids, more...), after...), nil)
}

// A re-driven row is stored at the stream position it was rejected at: if
// the stream sends its transaction again (a restart before the slot
// confirmed it, a PostgreSQL crash that forgot the confirmation), the check
// of that position finds it. Stored at position 0, it went in twice.
func TestRedrivenRowKeepsItsStreamPosition(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	addPoisonGuard(t, o)
	cfg := o.Config()
	r := start(t, cfg)
	r.waitStreaming(t)
	good := o.MustInsert(20, true)
	var poison int64
	if err := o.PG.QueryRow(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
	  VALUES ('poison', now(), 'test', '{}', 1) RETURNING id`).Scan(&poison); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "poison row failed", 60*time.Second, func() bool { return o.StatusCounts()["failed"] == 1 })
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	var failedLSN string
	var failedSeq int64
	if err := o.PG.QueryRow(ctx, `SELECT failed_lsn::text, failed_seq FROM event_outbox WHERE id = $1`, poison).Scan(&failedLSN, &failedSeq); err != nil {
		t.Fatalf("failed row's recorded position: %v", err)
	}

	if err := o.CH.Exec(ctx, fmt.Sprintf("ALTER TABLE `%s`.events DROP COLUMN _guard", o.CHDB)); err != nil {
		t.Fatal(err)
	}
	if res, err := retryFailed(o, 0); err != nil || res.Read != 1 || res.StillFailed != 0 {
		t.Fatalf("retry-failed: %+v, %v; want the row delivered", res, err)
	}
	var lsn, seq uint64
	if err := o.CH.QueryRow(ctx, fmt.Sprintf("SELECT _lsn, _seq FROM `%s`.events WHERE id = %d", o.CHDB, poison)).Scan(&lsn, &seq); err != nil {
		t.Fatal(err)
	}
	want, err := pglogrepl.ParseLSN(failedLSN)
	if err != nil || lsn != uint64(want) || seq != uint64(failedSeq) || lsn == 0 {
		t.Fatalf("re-driven row stored at (%X, %d), want its stream position (%s, %d)", lsn, seq, failedLSN, failedSeq)
	}

	// The stream sends the row's transaction again, from a slot position
	// below it: the row is found, not inserted a second time.
	if _, err := o.PG.Exec(ctx, `UPDATE event_outbox SET status = 'failed' WHERE id = $1`, poison); err != nil {
		t.Fatal(err)
	}
	var again []sink.Row
	if _, err := backfill.Failed(ctx, o.PG, cfg.Postgres.Table, 0, 10, func(r sink.Row) error { again = append(again, r); return nil }); err != nil || len(again) != 1 {
		t.Fatalf("read the row back: %d rows, %v", len(again), err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := sink.Open(ctx, sinkOptions(cfg, log, false, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Recover(ctx, uint64(want)-1); err != nil {
		t.Fatal(err)
	}
	res, err := s.Write(ctx, again)
	if err != nil || res.Inserted != 0 || res.Skipped != 1 {
		t.Errorf("re-sent transaction: %+v, %v; want the row recognised", res, err)
	}
	if _, err := o.PG.Exec(ctx, `UPDATE event_outbox SET status = 'processed' WHERE id = $1`, poison); err != nil {
		t.Fatal(err)
	}
	o.AssertExactlyOnce(append(good, poison), nil)
}

// A daemon that dies between creating a slot again and recording its
// backfill list leaves the slot and the creation mark: the next daemon must
// redo the creation, not take the previous slot's row ("backfill done", come
// over by replication after a failover) for this slot's, which would leave
// every row pending at the creation undelivered.
func TestInterruptedRecreationIsRedone(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	cfg := o.Config()
	r := start(t, cfg)
	first := o.MustInsert(100, true)
	waitFor(t, "first rows processed", 60*time.Second, func() bool { return o.StatusCounts()["processed"] == 100 })
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	// The walsender of the stopped daemon leaves the slot a moment after
	// the daemon closed its connection.
	waitSlotReleased(t, o, cfg.Postgres.Slot)
	if err := replication.DropSlot(ctx, o.PG, cfg.Postgres.Slot); err != nil {
		t.Fatal(err)
	}
	second := o.MustInsert(100, true)
	// What a daemon leaves when it dies right after CREATE_REPLICATION_SLOT.
	if err := backfill.BeginCreation(ctx, o.PG, cfg.Postgres.Slot); err != nil {
		t.Fatal(err)
	}
	if _, err := o.PG.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, cfg.Postgres.Slot); err != nil {
		t.Fatal(err)
	}
	r2 := start(t, o.Config())
	waitFor(t, "rows pending at the creation delivered", 60*time.Second, func() bool { return o.StatusCounts()["processed"] == 200 })
	third := o.MustInsert(10, true)
	waitFor(t, "streamed rows processed", 60*time.Second, func() bool { return o.StatusCounts()["processed"] == 210 })
	if err := r2.shutdown(t); err != nil {
		t.Fatal(err)
	}
	o.AssertExactlyOnce(append(append(first, second...), third...), nil)
}

// The runbook's reset of used-up attempts (docs/operations.md, failed rows)
// makes the periodic re-drive take the rows again.
func TestRunbookResetOfAttemptsRedrivesRows(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	ids := o.MustInsert(3, true)
	if _, err := o.PG.Exec(ctx, `UPDATE event_outbox SET status = 'failed', attempts = 5, last_error = 'old'`); err != nil {
		t.Fatal(err)
	}
	if res, err := retryFailed(o, 5); err != nil || res.Read != 0 {
		t.Fatalf("rows with used-up attempts: read %d, %v; want 0", res.Read, err)
	}
	if _, err := o.PG.Exec(ctx, `UPDATE event_outbox SET attempts = 1 WHERE status = 'failed'`); err != nil { // the runbook's statement
		t.Fatal(err)
	}
	if res, err := retryFailed(o, 5); err != nil || res.Read != 3 {
		t.Fatalf("after the runbook's reset: read %d, %v; want 3", res.Read, err)
	}
	o.AssertExactlyOnce(ids, nil)
}

// waitSlotReleased waits until the stopped daemon's walsender has let go of
// slot: it does so a moment after the daemon closed its connection, and the
// slot cannot be dropped before.
func waitSlotReleased(t *testing.T, o *testenv.Outbox, slot string) {
	t.Helper()
	waitFor(t, "the slot released", 30*time.Second, func() bool {
		var active bool
		err := o.PG.QueryRow(context.Background(), `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		return err == nil && !active
	})
}
