package daemon

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/internal/errclass"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

func slotExists(t *testing.T, o *testenv.Outbox) bool {
	t.Helper()
	var n int
	if err := o.PG.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, o.Slot).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// A publication without the outbox is refused at the start of the term,
// before the slot is created (a slot streaming from it would move past every
// row). Before the first successful session it is a permanent set-up error:
// Run returns it, with the fix (errclass). Once the publication is fixed the
// next start delivers everything.
func TestRunChecksThePublicationBeforeTheSlot(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	if _, err := o.PG.Exec(ctx, `ALTER PUBLICATION cdc_outbox DROP TABLE event_outbox`); err != nil {
		t.Fatal(err)
	}
	before := o.MustInsert(20, true)
	r, _ := startLogged(t, o.Config())
	var err error
	select {
	case err = <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run still retries a publication that does not publish the outbox")
	}
	var perr *errclass.PermanentError
	if !errors.As(err, &perr) || !strings.Contains(err.Error(), `publication "cdc_outbox" does not contain the outbox table`) {
		t.Fatalf("Run returned %v, want the publication problem as a permanent error", err)
	}
	if !strings.Contains(err.Error(), `ALTER PUBLICATION "cdc_outbox" ADD TABLE "public"."event_outbox"`) {
		t.Error("the error does not give the fix")
	}
	if slotExists(t, o) {
		t.Fatal("the slot was created with a publication that does not publish the outbox")
	}
	r.done <- err // for the cleanup's wait

	if _, err := o.PG.Exec(ctx, `ALTER PUBLICATION cdc_outbox ADD TABLE event_outbox`); err != nil {
		t.Fatal(err)
	}
	r, _ = startLogged(t, o.Config())
	r.waitStreaming(t)
	after := o.MustInsert(20, true)
	o.WaitCH(40, 60*time.Second)
	if err := r.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	o.AssertExactlyOnce(append(before, after...), nil)
}

// A second table added to the publication while the daemon streams: its
// row ends the session with an error naming it, the next terms refuse the
// publication, and the slot is never confirmed past the row, so the outbox
// rows committed after it stay pending (and in the stream) instead of the
// slot skipping whatever it does not expect.
func TestRowOfAnotherTableIsNeverConfirmedPast(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	if _, err := o.PG.Exec(ctx, `CREATE TABLE other (id bigserial PRIMARY KEY, note text)`); err != nil {
		t.Fatal(err)
	}
	r, log := startLogged(t, o.Config())
	r.waitStreaming(t)
	first := o.MustInsert(10, true)
	o.WaitCH(10, 60*time.Second)
	if _, err := o.PG.Exec(ctx, `ALTER PUBLICATION cdc_outbox ADD TABLE other`); err != nil {
		t.Fatal(err)
	}

	var oid uint32
	if err := o.PG.QueryRow(ctx, `INSERT INTO other (note) VALUES ('not an event') RETURNING 'other'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	// Every record of that transaction, its commit included, is before end.
	var end string
	if err := o.PG.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&end); err != nil {
		t.Fatal(err)
	}
	endLSN, err := pglogrepl.ParseLSN(end)
	if err != nil {
		t.Fatal(err)
	}
	second := o.MustInsert(10, true)

	want := "public.other (OID " + strconv.FormatUint(uint64(oid), 10) + ")"
	refused := `publication \"cdc_outbox\" publishes public.other besides the outbox`
	waitFor(t, "the error naming the relation and the next term refusing the publication, or the later rows delivered", 60*time.Second, func() bool {
		n, _ := o.CHCount()
		return (log.count(want) >= 1 && log.count(refused) >= 1) || n > 10
	})
	time.Sleep(2 * time.Second) // more than a status interval: a confirmation would have been sent
	var confirmed string
	if err := o.PG.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, o.Slot).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	confirmedLSN, _ := pglogrepl.ParseLSN(confirmed)
	if confirmedLSN >= endLSN {
		t.Errorf("slot confirmed %s, past the other table's transaction (ends before %s)", confirmedLSN, endLSN)
	}
	if n, _ := o.CHCount(); n != 10 {
		t.Errorf("ClickHouse has %d rows, want the 10 before the other table's row", n)
	}
	var pending int
	if err := o.PG.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE status = 'pending' AND id = ANY($1)`, second).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	if pending != len(second) {
		t.Errorf("%d of the %d rows after the other table's row are pending", pending, len(second))
	}
	if log.count(want) == 0 || log.count(refused) == 0 {
		t.Errorf("the log lacks the error naming the relation %s (%d) or the publication's (%d)", want, log.count(want), log.count(refused))
	}
	if err := r.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	o.AssertExactlyOnceAllowFailed(first, nil)

	// The recovery the errors give: fix the publication; the row written
	// before the fix stays in the slot, so drop it and start again: the new
	// slot's backfill delivers the pending rows, once.
	waitSlotReleased(t, o, o.Slot)
	for _, q := range []string{`ALTER PUBLICATION cdc_outbox DROP TABLE other`, `SELECT pg_drop_replication_slot('` + o.Slot + `')`} {
		if _, err := o.PG.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	r2, _ := startLogged(t, o.Config())
	o.WaitCH(20, 60*time.Second)
	if err := r2.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	o.AssertExactlyOnce(append(first, second...), nil)
}
