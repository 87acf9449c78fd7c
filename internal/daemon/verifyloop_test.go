package daemon

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// The leader's periodic verify publishes what it finds in the trailing
// window, and nothing for rows older than the window.
func TestPeriodicVerifySetsGauges(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	old := o.MustInsert(100, true)
	// Rows created before the window: their loss is not the periodic
	// verify's to find.
	if _, err := o.PG.Exec(ctx, `UPDATE event_outbox SET created_at = now() - interval '2 hours'`); err != nil {
		t.Fatal(err)
	}
	recent := o.MustInsert(200, true)
	cfg := o.Config()
	cfg.Verify.Interval = 300 * time.Millisecond
	cfg.Verify.Window = time.Hour
	r := start(t, cfg)
	o.WaitCH(300, 30*time.Second)
	waitFor(t, "a clean verify", 30*time.Second, func() bool {
		return metrics.Value(r.m.VerifyMissing) == 0
	})

	exec := func(q string) {
		if err := o.CH.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(fmt.Sprintf("ALTER TABLE `%s`.events DELETE WHERE id IN (%d, %d, %d, %d)", o.CHDB, old[3], recent[0], recent[10], recent[199]))
	exec(fmt.Sprintf("INSERT INTO `%[1]s`.events SELECT * FROM `%[1]s`.events WHERE id IN (%[2]d, %[3]d)", o.CHDB, old[5], recent[50]))
	waitFor(t, "cdc_verify_missing_rows 3 and cdc_verify_duplicated_rows 1", 30*time.Second, func() bool {
		return metrics.Value(r.m.VerifyMissing) == 3 && metrics.Value(r.m.VerifyDuplicated) == 1
	})
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
}
