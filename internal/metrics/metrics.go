// Package metrics defines the daemon's Prometheus metrics on a private
// registry (no global state). The names are a contract: dashboards, alerts
// and the README's metric table (checked by cmd/cdc's docs test) use them.
package metrics

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// Metrics holds every collector the daemon updates.
type Metrics struct {
	Registry   *prometheus.Registry
	collectors []prometheus.Collector

	RowsReceived   prometheus.Counter
	RowsFlushed    prometheus.Counter
	RowsFailed     prometheus.Counter
	BatchesFlushed prometheus.Counter
	FlushErrors    prometheus.Counter
	FlushDuration  prometheus.Histogram
	BatchRows      prometheus.Histogram
	BufferRows     prometheus.Gauge
	SlotLagBytes   prometheus.Gauge
	RetainedWAL    prometheus.Gauge
	ConfirmedLSN   prometheus.Gauge
	LastFlush      prometheus.Gauge
	Connected      prometheus.Gauge
	Leader         prometheus.Gauge
	HeartbeatLag   prometheus.Gauge
	Backfilled     prometheus.Counter
	LagWarning     prometheus.Gauge
	SlotLost       prometheus.Gauge
	OutboxDeleted  prometheus.Counter

	// Outbox backlog, refreshed with the slot lag (pending and failed rows,
	// age of the oldest pending row; 0 when none is pending).
	OutboxPending       prometheus.Gauge
	OutboxFailed        prometheus.Gauge
	OutboxOldestPending prometheus.Gauge
	// Set by the periodic verify (verify.interval).
	VerifyMissing    prometheus.Gauge
	VerifyDuplicated prometheus.Gauge

	// info is cdc_info{slot,table} = 1: alerts join it by job to name the
	// shard's slot and outbox table without hard-coding them (SetInfo).
	info *prometheus.GaugeVec
}

// newInfo returns cdc_info, whose labels name the instance's slot and table.
func newInfo() *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cdc_info",
		Help: "Always 1; its labels name the replication slot (postgres.slot) and the outbox table (postgres.table) this instance serves."},
		[]string{"slot", "table"})
}

// New registers the metrics, plus Go runtime and process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	m := &Metrics{
		Registry:       r,
		RowsReceived:   prometheus.NewCounter(prometheus.CounterOpts{Name: "cdc_rows_received_total", Help: "Outbox rows received from the replication stream or the backfill."}),
		RowsFlushed:    prometheus.NewCounter(prometheus.CounterOpts{Name: "cdc_rows_flushed_total", Help: "Rows inserted into ClickHouse by this process."}),
		RowsFailed:     prometheus.NewCounter(prometheus.CounterOpts{Name: "cdc_rows_failed_total", Help: "Rows ClickHouse rejected; marked failed in the outbox."}),
		BatchesFlushed: prometheus.NewCounter(prometheus.CounterOpts{Name: "cdc_batches_flushed_total", Help: "Batches inserted and marked."}),
		FlushErrors:    prometheus.NewCounter(prometheus.CounterOpts{Name: "cdc_flush_errors_total", Help: "Failed insert attempts (retried)."}),
		FlushDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cdc_flush_duration_seconds", Help: "Time to insert and mark one batch.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		BatchRows: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cdc_batch_rows", Help: "Rows per flushed batch.",
			Buckets: []float64{1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000}}),
		BufferRows:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "cdc_buffer_rows", Help: "Rows in the batch being filled."}),
		SlotLagBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cdc_slot_lag_bytes", Help: "pg_current_wal_lsn() minus the slot's confirmed_flush_lsn."}),
		RetainedWAL:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "cdc_slot_retained_wal_bytes", Help: "pg_current_wal_lsn() minus the slot's restart_lsn: WAL the slot keeps."}),
		// Values that are unknown until an event are left out until then:
		// a 0 would read as LSN 0/0 or "56 years since the last flush".
		ConfirmedLSN: newOptionalGauge(prometheus.GaugeOpts{Name: "cdc_confirmed_lsn",
			Help: "LSN confirmed to the slot (as a number); from the slot's confirmed_flush_lsn when the stream starts, absent before."}),
		LastFlush: newOptionalGauge(prometheus.GaugeOpts{Name: "cdc_last_flush_timestamp_seconds",
			Help: "Unix time of the last batch this process delivered; absent until its first."}),
		Connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cdc_replication_connected", Help: "1 while the replication stream is connected."}),
		Leader:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "cdc_leader", Help: "1 while this instance holds the slot's leader lock; 0 on a standby."}),
		HeartbeatLag: newOptionalGauge(prometheus.GaugeOpts{Name: "cdc_heartbeat_lag_seconds",
			Help: "Age of the newest heartbeat whose transaction is durable (every row before it in ClickHouse and marked), counted from the process start until one is; grows while none gets through. Absent when heartbeat.interval is 0."}),
		Backfilled:    prometheus.NewCounter(prometheus.CounterOpts{Name: "cdc_backfill_rows_total", Help: "Rows read by the initial backfill."}),
		LagWarning:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "cdc_slot_lag_warning", Help: "1 while the slot's lag exceeds replication.lag_warn_bytes."}),
		SlotLost:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "cdc_slot_lost", Help: "1 when the slot's wal_status is lost: streaming cannot resume without re-creating it."}),
		OutboxDeleted: prometheus.NewCounter(prometheus.CounterOpts{Name: "cdc_outbox_deleted_rows_total", Help: "Processed rows deleted by outbox.retention."}),
		OutboxPending: newOptionalGauge(prometheus.GaugeOpts{Name: "cdc_outbox_pending_rows", Help: "Outbox rows with status pending (not yet delivered)."}),
		OutboxFailed:  newOptionalGauge(prometheus.GaugeOpts{Name: "cdc_outbox_failed_rows", Help: "Outbox rows with status failed (rejected by ClickHouse)."}),
		OutboxOldestPending: newOptionalGauge(prometheus.GaugeOpts{Name: "cdc_outbox_oldest_pending_age_seconds",
			Help: "Age of the oldest pending outbox row (now - created_at); 0 when none is pending."}),
		VerifyMissing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cdc_verify_missing_rows",
			Help: "Processed outbox rows the last periodic verify (verify.interval) found missing in ClickHouse."}),
		VerifyDuplicated: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cdc_verify_duplicated_rows",
			Help: "Ids the last periodic verify (verify.interval) found stored more than once in ClickHouse."}),
		info: newInfo(),
	}
	m.collectors = []prometheus.Collector{m.RowsReceived, m.RowsFlushed, m.RowsFailed, m.BatchesFlushed, m.FlushErrors,
		m.FlushDuration, m.BatchRows, m.BufferRows, m.SlotLagBytes, m.RetainedWAL, m.ConfirmedLSN, m.LastFlush,
		m.Connected, m.Leader, m.HeartbeatLag, m.Backfilled, m.LagWarning, m.SlotLost, m.OutboxDeleted,
		m.OutboxPending, m.OutboxFailed, m.OutboxOldestPending, m.VerifyMissing, m.VerifyDuplicated, m.info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})}
	for _, c := range m.collectors {
		f(c)
	}
	return m
}

// All gathers every metric cdc may export, those not known yet included
// (for documentation and for checking dashboards and alerts against it).
func (m *Metrics) All() prometheus.Gatherer {
	r := prometheus.NewRegistry()
	for _, c := range m.collectors {
		switch g := c.(type) {
		case *optionalGauge:
			c = g.Gauge
		case *prometheus.GaugeVec:
			v := newInfo()
			v.WithLabelValues("slot", "table").Set(1)
			c = v
		}
		r.MustRegister(c)
	}
	return r
}

// SetInfo sets cdc_info{slot, table} to 1, the only series of cdc_info.
func (m *Metrics) SetInfo(slot, table string) {
	m.info.Reset()
	m.info.WithLabelValues(slot, table).Set(1)
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// Value reads a counter's or gauge's current value (for logs and reports).
func Value(m prometheus.Metric) float64 {
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		return 0
	}
	switch {
	case pb.Counter != nil:
		return pb.Counter.GetValue()
	case pb.Gauge != nil:
		return pb.Gauge.GetValue()
	}
	return 0
}

// optionalGauge is a gauge that is left out of the exposition until it is
// first set: a value nobody knows yet is absent, never a misleading 0.
type optionalGauge struct {
	prometheus.Gauge
	set atomic.Bool
}

func newOptionalGauge(opts prometheus.GaugeOpts) *optionalGauge {
	return &optionalGauge{Gauge: prometheus.NewGauge(opts)}
}

func (g *optionalGauge) Set(v float64)                       { g.Gauge.Set(v); g.set.Store(true) }
func (g *optionalGauge) Inc()                                { g.Gauge.Inc(); g.set.Store(true) }
func (g *optionalGauge) Dec()                                { g.Gauge.Dec(); g.set.Store(true) }
func (g *optionalGauge) Add(v float64)                       { g.Gauge.Add(v); g.set.Store(true) }
func (g *optionalGauge) Sub(v float64)                       { g.Gauge.Sub(v); g.set.Store(true) }
func (g *optionalGauge) SetToCurrentTime()                   { g.Gauge.SetToCurrentTime(); g.set.Store(true) }
func (g *optionalGauge) Describe(ch chan<- *prometheus.Desc) { g.Gauge.Describe(ch) }

// Collect emits the gauge only once it has been set.
func (g *optionalGauge) Collect(ch chan<- prometheus.Metric) {
	if g.set.Load() {
		g.Gauge.Collect(ch)
	}
}
