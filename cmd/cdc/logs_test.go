package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// The log of `cdc run` tells an operator what happened without a decoder
// ring: a rejected row's line names its slot and table; the minute's
// summary carries the totals delivered and a fractional rate (13 rows in a
// minute are 0.22 rows/s, not 0). It waits for the first summary, a minute
// after start.
func TestRunLogLines(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	port := testenv.FreePort(t)
	p := startDaemon(t, bin, withListen(o.Env(), port), t.TempDir(), "cdc")
	waitReason(t, "ready", fmt.Sprintf("http://127.0.0.1:%d/readyz", port), 200, "ready")
	good := o.MustInsert(13, true)
	// DateTime on ClickHouse 18 cannot hold 1950: rejected by conversion.
	if _, err := o.PG.Exec(context.Background(), `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
		VALUES ('old', '1950-01-01', 'test', '{}', 1)`); err != nil {
		t.Fatal(err)
	}
	o.WaitCH(uint64(len(good)), 30*time.Second)
	waitUntil(t, "the row rejected", 30*time.Second, func() bool { return o.StatusCounts()["failed"] == 1 })
	rejected := logLines(t, p.log, "row rejected by ClickHouse, marked failed")
	if len(rejected) != 1 || rejected[0]["slot"] != o.Slot || rejected[0]["table"] != "public.event_outbox" || rejected[0]["id"] == nil {
		t.Errorf("rejected-row lines %v, want one with id, slot %q and table public.event_outbox", rejected, o.Slot)
	}

	waitUntil(t, "the first summary", 90*time.Second, func() bool { return len(logLines(t, p.log, "summary")) > 0 })
	s := logLines(t, p.log, "summary")[0]
	rate, _ := s["rows_per_second"].(float64)
	if rate <= 0 || rate > 1 || s["rows_flushed_total"] != float64(len(good)) || s["rows_failed_total"] != float64(1) ||
		s["slot"] != o.Slot || s["table"] != "public.event_outbox" {
		t.Errorf("summary %v: want 0 < rows_per_second <= 1, rows_flushed_total %d, rows_failed_total 1, slot and table", s, len(good))
	}
	if code := p.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("cdc run exited %d", code)
	}
}
