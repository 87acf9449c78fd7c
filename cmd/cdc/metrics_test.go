package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

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
	// The alerts name the shard's slot and table from cdc_info's labels.
	info := fmt.Sprintf("cdc_info{slot=%q,table=%q} 1\n", o.Slot, "public.event_outbox")
	if body := scrapeRaw(t, port); !strings.Contains(body, info) {
		t.Errorf("/metrics has no %q", info)
	}
	if code := p.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	o.AssertExactlyOnce(committed, nil)
}

// scrapeRaw returns the /metrics body.
func scrapeRaw(t *testing.T, port int) string {
	t.Helper()
	code, body := httpGet(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	return body
}

// After a restart the metrics tell the truth from the first scrape:
// cdc_confirmed_lsn is the slot's position (not 0), and stays so while the
// periodic re-drive delivers a failed row; the last-flush time and the
// heartbeat lag (heartbeat off) are absent rather than 0; the outbox
// backlog gauges count pending and failed rows and the oldest pending age.
func TestMetricsTrueAfterRestart(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	dir := t.TempDir()
	env := withEnv(o.Env(), "CDC_HEARTBEAT_INTERVAL=0")
	port := testenv.FreePort(t)
	first := startDaemon(t, bin, withListen(env, port), dir, "first")
	ids := o.MustInsert(20, true)
	o.WaitCH(20, 30*time.Second)
	waitUntil(t, "rows marked", 30*time.Second, func() bool { return o.StatusCounts()["processed"] == 20 })
	if code := first.terminate(t, 30*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	ctx := context.Background()
	var confirmed string
	if err := o.PG.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, o.Slot).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	slotLSN, err := pglogrepl.ParseLSN(confirmed)
	if err != nil || slotLSN == 0 {
		t.Fatalf("slot confirmed_flush_lsn %q: %v", confirmed, err)
	}
	// One row waits as pending for an hour (an UPDATE is not published, so
	// it stays pending), one is failed and re-driven by the periodic retry.
	if _, err := o.PG.Exec(ctx, `UPDATE event_outbox SET status = 'pending', created_at = (now() AT TIME ZONE 'utc') - interval '1 hour' WHERE id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := o.PG.Exec(ctx, `UPDATE event_outbox SET status = 'failed', last_error = 'test', attempts = 1 WHERE id = $1`, ids[1]); err != nil {
		t.Fatal(err)
	}

	port = testenv.FreePort(t)
	second := startDaemon(t, bin, withListen(withEnv(env, "CDC_FAILED_RETRY_INTERVAL=1s"), port), dir, "second")
	waitUntil(t, "ready", 30*time.Second, func() bool { c, _ := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", port)); return c == 200 })
	m := scrape(t, port)
	if got := m["cdc_confirmed_lsn"]; got < float64(slotLSN) {
		t.Errorf("first scrape: cdc_confirmed_lsn %v (%s), want at least the slot's %s", got, pglogrepl.LSN(got), slotLSN)
	}
	body := scrapeRaw(t, port)
	for _, absent := range []string{"\ncdc_last_flush_timestamp_seconds ", "\ncdc_heartbeat_lag_seconds "} {
		if strings.Contains(body, absent) {
			t.Errorf("%s is exposed before it is known", strings.TrimSpace(absent))
		}
	}
	for _, help := range []string{"# HELP cdc_last_flush_timestamp_seconds", "# HELP cdc_heartbeat_lag_seconds"} {
		if strings.Contains(body, help) {
			t.Errorf("%q exposed without a sample", help)
		}
	}

	waitUntil(t, "backlog gauges", 30*time.Second, func() bool { _, ok := scrape(t, port)["cdc_outbox_pending_rows"]; return ok })
	waitUntil(t, "the failed row re-driven", 30*time.Second, func() bool { return o.StatusCounts()["failed"] == 0 })
	waitUntil(t, "backlog gauges after the re-drive", 30*time.Second, func() bool { return scrape(t, port)["cdc_outbox_failed_rows"] == 0 })
	m = scrape(t, port)
	if m["cdc_outbox_pending_rows"] != 1 {
		t.Errorf("cdc_outbox_pending_rows %v, want 1", m["cdc_outbox_pending_rows"])
	}
	if age := m["cdc_outbox_oldest_pending_age_seconds"]; age < 3590 || age > 3700 {
		t.Errorf("cdc_outbox_oldest_pending_age_seconds %v, want about 3600", age)
	}
	if got := m["cdc_confirmed_lsn"]; got < float64(slotLSN) {
		t.Errorf("after the re-drive: cdc_confirmed_lsn %v, want at least %s (a re-drive must not reset it)", got, slotLSN)
	}
	if m["cdc_last_flush_timestamp_seconds"] < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("cdc_last_flush_timestamp_seconds %v after the re-drive's flush", m["cdc_last_flush_timestamp_seconds"])
	}
	if code := second.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
}
