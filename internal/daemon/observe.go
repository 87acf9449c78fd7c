package daemon

import (
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
)

// Pipelines report to observers (pipeline.Observer); these decide which of
// the process's metrics a pipeline's work touches. The stream's and the
// backfill's (streamObserver) update the counters and the gauge of
// buffered rows; the re-drives' and replay's (workObserver) only the
// counters of work done, so a re-drive running beside the stream never
// resets the stream's gauges. cdc_confirmed_lsn is no pipeline's: the
// stream sets it from what it confirms (Daemon.confirm).

// workObserver counts delivered work in the process's counters.
type workObserver struct{ m *metrics.Metrics }

func (o workObserver) Buffered(int, int)  {}
func (o workObserver) InsertFailed(error) { o.m.FlushErrors.Inc() }
func (o workObserver) Inserted(rows int)  { o.m.RowsFlushed.Add(float64(rows)) }
func (o workObserver) Rejected(rows int)  { o.m.RowsFailed.Add(float64(rows)) }
func (o workObserver) Delivered(rows int, took time.Duration) {
	o.m.BatchesFlushed.Inc()
	o.m.BatchRows.Observe(float64(rows))
	o.m.FlushDuration.Observe(took.Seconds())
	o.m.LastFlush.SetToCurrentTime()
}

// streamObserver is the stream's (and the backfill's, which precedes it):
// the counters, rows received (cdc_rows_received_total counts the stream's
// and the backfill's rows) and the rows buffered (cdc_buffer_rows).
type streamObserver struct{ workObserver }

func (o streamObserver) Buffered(received, buffered int) {
	if received > 0 {
		o.m.RowsReceived.Add(float64(received))
	}
	o.m.BufferRows.Set(float64(buffered))
}
