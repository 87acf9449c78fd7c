package daemon

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/backoff"
	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
	"github.com/outbox-cdc/outbox-cdc/replication"
	"github.com/outbox-cdc/outbox-cdc/status"
)

// every runs fn now and then every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func(context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		fn(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// everyAfter runs fn every interval, the first time one interval from now,
// until ctx ends; an interval of 0 or less runs nothing.
func everyAfter(ctx context.Context, interval time.Duration, fn func(context.Context)) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn(ctx)
	}
}

// monitorSlot keeps the slot gauges current on every instance (leader or
// standby), warns while the lag is over replication.lag_warn_bytes, and
// logs a periodic summary.
func (d *Daemon) monitorSlot(ctx context.Context) {
	slot := d.cfg.Postgres.Slot
	var lastWarn, lastSummary time.Time
	lastFlushed := metrics.Value(d.metrics.RowsFlushed)
	lastSummary = time.Now()
	every(ctx, 5*time.Second, func(ctx context.Context) {
		d.refreshBacklog(ctx) // before the slot: the backlog exists without one
		info, err := replication.LookupSlot(ctx, d.pool, slot)
		if errors.Is(err, replication.ErrSlotNotFound) || err != nil {
			return
		}
		d.metrics.SlotLagBytes.Set(float64(info.LagBytes))
		d.metrics.RetainedWAL.Set(float64(info.RetainedBytes))
		lost := 0.0
		if info.Health().Class == replication.SlotLost {
			lost = 1
		}
		d.metrics.SlotLost.Set(lost)
		over := d.cfg.Replication.LagWarnBytes > 0 && info.LagBytes > d.cfg.Replication.LagWarnBytes
		if over {
			d.metrics.LagWarning.Set(1)
			if time.Since(lastWarn) > time.Minute {
				d.log.Warn("replication slot lag is over the threshold", "slot", slot, "lag_bytes", info.LagBytes,
					"retained_wal_bytes", info.RetainedBytes, "threshold", d.cfg.Replication.LagWarnBytes, "wal_status", info.WALStatus)
				lastWarn = time.Now()
			}
		} else {
			d.metrics.LagWarning.Set(0)
		}
		if since := time.Since(lastSummary); since >= time.Minute {
			flushed := metrics.Value(d.metrics.RowsFlushed)
			// Totals since start, and a rate with two decimals: 13 rows in a
			// minute is 0.22 rows/s, not 0.
			d.log.Info("summary", "slot", slot, "table", d.cfg.Postgres.Table, "streaming", d.streaming.Load(),
				"rows_per_second", math.Round((flushed-lastFlushed)/since.Seconds()*100)/100,
				"rows_flushed_total", int64(flushed), "rows_received_total", int64(metrics.Value(d.metrics.RowsReceived)),
				"rows_failed_total", int64(metrics.Value(d.metrics.RowsFailed)),
				"lag_bytes", info.LagBytes, "retained_wal_bytes", info.RetainedBytes)
			lastFlushed, lastSummary = flushed, time.Now()
		}
	})
}

// refreshBacklog sets the outbox gauges from the counts `cdc status`
// reports. A failed count leaves them as they were (the lag is refreshed
// regardless).
func (d *Daemon) refreshBacklog(ctx context.Context) {
	b, err := status.OutboxBacklog(ctx, d.pool, d.cfg.Postgres.Table)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Debug("outbox backlog", "table", d.cfg.Postgres.Table, "err", err)
		}
		return
	}
	d.metrics.OutboxPending.Set(float64(b.Pending))
	d.metrics.OutboxFailed.Set(float64(b.Failed))
	age := 0.0
	if b.OldestPendingAgeSeconds != nil {
		age = max(*b.OldestPendingAgeSeconds, 0)
	}
	d.metrics.OutboxOldestPending.Set(age)
}

// heartbeat emits a transactional logical message every heartbeat.interval
// while this instance leads.
func (d *Daemon) heartbeat(ctx context.Context) {
	if d.cfg.Heartbeat.Interval <= 0 {
		return
	}
	every(ctx, d.cfg.Heartbeat.Interval, func(ctx context.Context) {
		if err := replication.EmitHeartbeat(ctx, d.pool, time.Now()); err != nil && ctx.Err() == nil {
			d.log.Warn("heartbeat", "slot", d.cfg.Postgres.Slot, "err", err)
		}
	})
}

// refreshHeartbeatLag sets cdc_heartbeat_lag_seconds every second on every
// instance, leader or standby, so the gauge grows while no heartbeat gets
// through (see heartbeatClock).
func (d *Daemon) refreshHeartbeatLag(ctx context.Context) {
	every(ctx, time.Second, func(context.Context) {
		d.metrics.HeartbeatLag.Set(d.heartbeats.age(time.Now()).Seconds())
	})
}

// retention deletes processed rows older than outbox.retention, a thousand
// at a time with a pause in between, while this instance leads.
func (d *Daemon) retention(ctx context.Context) {
	keep := d.cfg.Outbox.Retention
	if keep <= 0 {
		return
	}
	every(ctx, time.Minute, func(ctx context.Context) {
		for ctx.Err() == nil {
			n, err := d.store.DeleteProcessed(ctx, keep, 1000)
			if err != nil {
				if ctx.Err() == nil {
					d.log.Warn("outbox retention", "table", d.cfg.Postgres.Table, "err", err)
				}
				return
			}
			d.metrics.OutboxDeleted.Add(float64(n))
			if n < 1000 || backoff.Sleep(ctx, 100*time.Millisecond) != nil {
				return
			}
		}
	})
}
