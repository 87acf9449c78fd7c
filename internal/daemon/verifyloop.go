package daemon

import (
	"context"
	"time"

	"github.com/outbox-cdc/outbox-cdc/verify"
)

// verifyLoop compares the trailing window (rows created in the last
// verify.window) with ClickHouse every verify.interval while this instance
// leads, and publishes what it found in cdc_verify_missing_rows and
// cdc_verify_duplicated_rows. It only reads; fixing is an operator's call
// (cdc replay, docs/operations.md). A failed run leaves the gauges as they
// were and is logged.
func (d *Daemon) verifyLoop(ctx context.Context) {
	everyAfter(ctx, d.cfg.Verify.Interval, func(ctx context.Context) {
		rep, err := d.verifyWindow(ctx)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				d.log.Warn("periodic verify", "err", err)
			}
		case rep == nil: // no rows in the window
			d.metrics.VerifyMissing.Set(0)
			d.metrics.VerifyDuplicated.Set(0)
		default:
			d.metrics.VerifyMissing.Set(float64(rep.Missing.Count))
			d.metrics.VerifyDuplicated.Set(float64(rep.Duplicated.Count))
			args := []any{"from_id", rep.FromID, "to_id", rep.ToID, "rows", rep.Rows, "seconds", rep.Seconds,
				"missing", rep.Missing.Count, "missing_sample", rep.Missing.Sample,
				"duplicated", rep.Duplicated.Count, "duplicated_sample", rep.Duplicated.Sample, "not_in_outbox", rep.NotInOutbox.Count}
			if rep.Clean() {
				d.log.Info("periodic verify: ClickHouse matches the outbox", args...)
			} else {
				d.log.Warn("periodic verify: ClickHouse differs from the outbox; see cdc verify and cdc replay in docs/operations.md", args...)
			}
		}
	})
}

// verifyWindow verifies the rows created in the last verify.window; nil
// when there are none.
func (d *Daemon) verifyWindow(ctx context.Context) (*verify.Report, error) {
	from, to, ok, err := verify.TrailingIDs(ctx, d.pool, d.cfg.Postgres.Table, time.Now().Add(-d.cfg.Verify.Window))
	if err != nil || !ok {
		return nil, err
	}
	return Verify(ctx, d.cfg, d.pool, d.log, Range{FromID: from, ToID: to}, nil)
}
