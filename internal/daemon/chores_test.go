package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

func TestHeartbeatTravelsTheStream(t *testing.T) {
	o := testenv.NewOutbox(t)
	cfg := o.Config()
	cfg.Heartbeat.Interval = 200 * time.Millisecond
	r := start(t, cfg)
	r.waitStreaming(t)
	// The gauge counts from the start until a heartbeat has come back
	// through the slot and is durable; past 3 s, a value under 2 s means one
	// did.
	time.Sleep(3 * time.Second)
	waitFor(t, "a heartbeat delivered", 30*time.Second, func() bool { return metrics.Value(r.m.HeartbeatLag) < 2 })
	// With only heartbeats flowing the slot keeps up.
	waitFor(t, "slot lag under 1 MiB", 30*time.Second, func() bool {
		lag, err := o.SlotLag(cfg.Postgres.Slot)
		return err == nil && lag < 1<<20
	})
}

func TestRetentionDeletesOnlyOldProcessedRows(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	if _, err := o.PG.Exec(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version, status, updated_at)
	  SELECT 'old', now(), 'test', '{}', 1, s, (now() AT TIME ZONE 'utc') - interval '10 days'
	  FROM unnest(ARRAY['processed', 'processed', 'processed', 'pending', 'failed']) s`); err != nil {
		t.Fatal(err)
	}
	cfg := o.Config()
	cfg.Outbox.Retention = 24 * time.Hour
	r := start(t, cfg)
	fresh := o.MustInsert(20, true)
	o.WaitCH(22, 30*time.Second) // 20 fresh + the old pending and failed rows via the backfill
	waitFor(t, "old processed rows deleted", 30*time.Second, func() bool { return testutil.ToFloat64(r.m.OutboxDeleted) == 3 })
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := o.PG.QueryRow(ctx, `SELECT count(*) FROM event_outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	// Fresh processed rows and the (now delivered) old pending/failed ones stay.
	if left != len(fresh)+2 {
		t.Errorf("%d rows left, want %d", left, len(fresh)+2)
	}
}

func TestSlotGaugesAreUpdated(t *testing.T) {
	o := testenv.NewOutbox(t)
	cfg := o.Config()
	cfg.Replication.LagWarnBytes = 1 // any lag at all is "over"
	r := start(t, cfg)
	r.waitStreaming(t)
	waitFor(t, "retained WAL gauge", 30*time.Second, func() bool { return testutil.ToFloat64(r.m.RetainedWAL) > 0 })
	waitFor(t, "lag warning over a 1-byte threshold", 30*time.Second, func() bool {
		o.MustInsert(1, true) // keep some lag around
		return testutil.ToFloat64(r.m.LagWarning) == 1
	})
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(r.m.SlotLost); got != 0 {
		t.Errorf("cdc_slot_lost = %v on a healthy slot", got)
	}
}
