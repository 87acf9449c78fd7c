package daemon

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/getsentry/sentry-go"
	"github.com/jackc/pglogrepl"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// A re-drive runs a pipeline of its own beside the stream's. Its batches
// must not touch the stream's gauges: cdc_buffer_rows still counts the
// stream's buffered rows and cdc_confirmed_lsn the slot's position after a
// re-drive delivered a batch (a re-drive reset them to 0 when every
// pipeline wrote the process's metrics).
func TestRedriveLeavesTheStreamGaugesAlone(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	// Processed before the slot exists: the backfill leaves it alone, and
	// turning it failed later is an UPDATE the stream does not see.
	var redriven int64
	if err := o.PG.QueryRow(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version, status)
	  VALUES ('order.created', now(), 'test', '{}', 1, 'processed') RETURNING id`).Scan(&redriven); err != nil {
		t.Fatal(err)
	}
	cfg := o.Config()
	cfg.Batch.Size = 1000
	cfg.Batch.FlushInterval = time.Hour // the stream's rows stay buffered
	r := start(t, cfg)
	waitFor(t, "streaming", 30*time.Second, func() bool { return r.d.streaming.Load() })
	o.MustInsert(300, true)
	waitFor(t, "300 rows buffered", 30*time.Second, func() bool { return testutil.ToFloat64(r.m.BufferRows) == 300 })
	confirmed := testutil.ToFloat64(r.m.ConfirmedLSN)
	if confirmed == 0 {
		t.Fatal("cdc_confirmed_lsn is 0 while streaming: it starts at the slot's position")
	}

	if _, err := o.PG.Exec(ctx, `UPDATE event_outbox SET status = 'failed', attempts = 1 WHERE id = $1`, redriven); err != nil {
		t.Fatal(err)
	}
	res, err := r.d.redriveOnce(ctx)
	if err != nil || res.Read != 1 || res.StillFailed != 0 {
		t.Fatalf("re-drive: %+v, %v; want one row read and delivered", res, err)
	}
	if got := testutil.ToFloat64(r.m.BufferRows); got != 300 {
		t.Errorf("cdc_buffer_rows = %v after a re-drive, want the stream's 300", got)
	}
	if got := testutil.ToFloat64(r.m.ConfirmedLSN); got < confirmed {
		t.Errorf("cdc_confirmed_lsn = %v after a re-drive, was %v: it only moves with the stream", got, confirmed)
	}

	// Sentry hears the LSN the stream confirmed, not a re-drive's.
	events := &recordingTransport{}
	if err := sentry.Init(sentry.ClientOptions{Transport: events}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sentry.Init(sentry.ClientOptions{}) }) // back to off
	r.d.report(errors.New("probe"), nil)
	want := pglogrepl.LSN(r.d.confirmed.Load()).String()
	if got := events.confirmedLSN(); got != want || r.d.confirmed.Load() < uint64(confirmed) {
		t.Errorf("Sentry context confirmed_lsn %q, want the stream's %s (at least %s)", got, want, pglogrepl.LSN(confirmed))
	}
}

// recordingTransport keeps the events Sentry would send.
type recordingTransport struct {
	mu     sync.Mutex
	events []*sentry.Event
}

func (r *recordingTransport) Flush(time.Duration) bool              { return true }
func (r *recordingTransport) FlushWithContext(context.Context) bool { return true }
func (r *recordingTransport) Configure(sentry.ClientOptions)        {}
func (r *recordingTransport) Close()                                {}
func (r *recordingTransport) SendEvent(e *sentry.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// confirmedLSN is the confirmed_lsn of the last event's cdc context.
func (r *recordingTransport) confirmedLSN() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) == 0 {
		return ""
	}
	s, _ := r.events[len(r.events)-1].Contexts["cdc"]["confirmed_lsn"].(string)
	return s
}
