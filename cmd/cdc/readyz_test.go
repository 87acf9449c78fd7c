package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// /readyz names why an instance is not ready, with the status codes of
// DESIGN.md §4 (503 until it streams): backfilling, the last session error
// (with the restart delay), standby (with the holder's backend_pid). The
// standby says once that it waits, not at every retry, with durations as
// text in its JSON log. (ClickHouse down: TestClickHouseRecoveryIsPrompt;
// a lost quorum: TestStatusShowsClusterReplicas.)
func TestReadyzReasons(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	// Rows that predate the slot, backfilled one per insert (max_rows 1: no
	// group commit, and sleepEachRow refuses a block over 3 s), each insert
	// slowed by the table: the backfill lasts long enough to be seen.
	preexisting := o.MustInsert(15, true)
	if err := o.CH.Exec(ctx, fmt.Sprintf("ALTER TABLE `%s`.events ADD COLUMN _slow UInt8 MATERIALIZED sleepEachRow(0.3)", o.CHDB)); err != nil {
		t.Fatal(err)
	}
	pa, pb := testenv.FreePort(t), testenv.FreePort(t)
	readyA, readyB := fmt.Sprintf("http://127.0.0.1:%d/readyz", pa), fmt.Sprintf("http://127.0.0.1:%d/readyz", pb)
	dir := t.TempDir()
	envA := append(withListen(o.Env(), pa), "CDC_BATCH_SIZE=1", "CDC_BATCH_MAX_ROWS=1", "CDC_RETRY_INITIAL_BACKOFF=5s", "CDC_RETRY_MAX_BACKOFF=10s")
	a := startDaemon(t, bin, envA, dir, "a")
	waitReason(t, "a backfilling", readyA, 503, "backfilling: delivering the rows that predate slot")
	waitReason(t, "a ready", readyA, 200, "ready")
	o.WaitCH(uint64(len(preexisting)), 30*time.Second)

	// The walsender ends under the leader: its session ends, and until the
	// restart /readyz says why.
	if _, err := o.PG.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1`, o.Slot); err != nil {
		t.Fatal(err)
	}
	waitReason(t, "a's session error", readyA, 503, "session ended, restarting in ")
	waitReason(t, "a ready again", readyA, 200, "ready")

	b := startDaemon(t, bin, withListen(o.Env(), pb), dir, "b")
	waitReason(t, "b standing by", readyB, 503, "standby: another instance leads slot "+fmt.Sprintf("%q", o.Slot)+": backend_pid ")
	time.Sleep(3 * time.Second) // 15 standby retries of 200ms
	lines := logLines(t, b.log, "standby: another instance leads this slot; waiting")
	if len(lines) != 1 {
		t.Errorf("standby logged its wait %d times in 3s, want once (then at most once a minute)", len(lines))
	} else if lines[0]["retry_every"] != "200ms" || !strings.HasPrefix(fmt.Sprint(lines[0]["holder"]), "backend_pid ") {
		t.Errorf("standby line %v: want retry_every \"200ms\" and holder \"backend_pid …\"", lines[0])
	}
	for _, p := range []*daemonProc{b, a} {
		if code := p.terminate(t, 30*time.Second); code != 0 {
			t.Errorf("%s exited %d", p.name, code)
		}
	}
	o.AssertExactlyOnce(preexisting, nil)
}

// waitReason waits until url answers code with a body containing reason.
func waitReason(t *testing.T, what, url string, code int, reason string) {
	t.Helper()
	var lastCode int
	var lastBody string
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		lastCode, lastBody = httpGet(url)
		if lastCode == code && strings.Contains(lastBody, reason) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: /readyz answered %d %q, want %d with %q", what, lastCode, lastBody, code, reason)
}

// logLines returns the JSON log lines of path whose msg is msg.
func logLines(t *testing.T, path, msg string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(string(b), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}
