package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// scrape returns the unlabelled samples of /metrics.
func scrape(t *testing.T, port int) map[string]float64 {
	t.Helper()
	code, body := httpGet(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") || strings.Contains(line, "{") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 2 {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				out[f[0]] = v
			}
		}
	}
	return out
}

// The metrics a Prometheus scrape sees match what happened: every committed
// row received and flushed, nothing failed, the stream connected, lag and
// confirmed LSN reported.
func TestMetricsMatchDelivery(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	port := testenv.FreePort(t)
	p := startDaemon(t, bin, append(withListen(o.Env(), port), "CDC_BATCH_SIZE=100"), t.TempDir(), "cdc")
	waitUntil(t, "ready", 30*time.Second, func() bool { c, _ := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", port)); return c == 200 })
	var committed []int64
	for i := 0; i < 10; i++ {
		committed = append(committed, o.MustInsert(37, true)...)
		o.MustInsert(5, false)
	}
	o.WaitCH(uint64(len(committed)), 30*time.Second)
	waitUntil(t, "slot gauges", 30*time.Second, func() bool { return scrape(t, port)["cdc_slot_retained_wal_bytes"] > 0 })
	m := scrape(t, port)
	want := map[string]float64{
		"cdc_rows_received_total":   float64(len(committed)),
		"cdc_rows_flushed_total":    float64(len(committed)),
		"cdc_rows_failed_total":     0,
		"cdc_replication_connected": 1,
		"cdc_leader":                1,
		"cdc_buffer_rows":           0,
	}
	for name, v := range want {
		if got, ok := m[name]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, v)
		}
	}
	for _, name := range []string{"cdc_batches_flushed_total", "cdc_confirmed_lsn", "cdc_last_flush_timestamp_seconds",
		"cdc_flush_duration_seconds_count", "cdc_batch_rows_count", "process_resident_memory_bytes", "go_goroutines"} {
		if m[name] <= 0 {
			t.Errorf("%s = %v, want > 0", name, m[name])
		}
	}
	for _, name := range []string{"cdc_flush_errors_total", "cdc_slot_lag_bytes"} {
		if _, ok := m[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
	if code := p.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	o.AssertExactlyOnce(committed, nil)
}
