package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

type verdictReport struct {
	Verdict  string   `json:"verdict"`
	Problems []string `json:"problems"`
	ExitCode int      `json:"exit_code"`
	State    string   `json:"state"`
}

func statusJSON(t *testing.T, bin string, env []string, args ...string) (verdictReport, string, int) {
	t.Helper()
	stdout, stderr, code, _ := runStatusBinary(t, bin, env, append([]string{"status", "--json"}, args...)...)
	var r verdictReport
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("status --json: not JSON (%v):\n%s\n%s", err, stdout, stderr)
	}
	if r.ExitCode != code {
		t.Errorf("exit_code %d in JSON, process exited %d", r.ExitCode, code)
	}
	return r, stderr, code
}

func hasProblem(r verdictReport, sub string) bool {
	for _, p := range r.Problems {
		if strings.Contains(p, sub) {
			return true
		}
	}
	return false
}

// cdc status gives a verdict: ok (exit 0) only while cdc delivers; degraded
// (exit 5) with the problems named when no process streams, ClickHouse is
// unreachable, rows failed, pending rows are older than --max-pending-age or
// the lag is over replication.lag_warn_bytes.
func TestStatusVerdict(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	env := withEnv(o.Env(), "CDC_HTTP_LISTEN=127.0.0.1:0")
	p := startDaemon(t, bin, env, t.TempDir(), "leader")
	o.MustInsert(5, true)
	o.WaitCH(5, 30*time.Second)
	waitUntil(t, "rows marked processed", 30*time.Second, func() bool { return o.StatusCounts()["processed"] == 5 })

	r, stderr, code := statusJSON(t, bin, env)
	if code != 0 || r.Verdict != "ok" || r.Problems == nil || len(r.Problems) != 0 || stderr != "" {
		t.Fatalf("healthy: exit %d verdict %q problems %q stderr %q; want 0, ok, []", code, r.Verdict, r.Problems, stderr)
	}
	table, _, code, _ := runStatusBinary(t, bin, env, "status")
	if first := strings.SplitN(table, "\n", 2)[0]; code != 0 || !strings.HasSuffix(first, "  OK") {
		t.Errorf("healthy table: exit %d, first line %q", code, first)
	}

	r, stderr, code = statusJSON(t, bin, withEnv(env, fmt.Sprintf("CDC_CLICKHOUSE_ADDR=127.0.0.1:%d", testenv.FreePort(t))))
	if code != 5 || r.Verdict != "degraded" || r.State != "degraded" || !hasProblem(r, "clickhouse unavailable") {
		t.Errorf("clickhouse down: exit %d verdict %q problems %q; want 5, degraded, clickhouse unavailable", code, r.Verdict, r.Problems)
	}
	if strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "clickhouse unavailable") {
		t.Errorf("stderr %q: want one line naming the problem", stderr)
	}

	if code := p.terminate(t, 30*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	ids := o.MustInsert(3, true)
	if _, err := o.PG.Exec(context.Background(), `UPDATE event_outbox SET status = 'failed' WHERE id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	r, _, code = statusJSON(t, bin, withEnv(env, "CDC_REPLICATION_LAG_WARN_BYTES=1"), "--max-pending-age", "1s")
	t.Logf("problems: %q", r.Problems)
	for _, want := range []string{"no active consumer", "1 failed rows", "2 pending rows, the oldest waiting", "over replication.lag_warn_bytes (1)"} {
		if !hasProblem(r, want) {
			t.Errorf("problems lack %q", want)
		}
	}
	if code != 5 || r.Verdict != "degraded" {
		t.Errorf("exit %d verdict %q, want 5 degraded", code, r.Verdict)
	}
	// The default maximum age (5m) does not count 2 s old rows.
	if r, _, _ = statusJSON(t, bin, env); hasProblem(r, "pending rows") {
		t.Errorf("pending rows counted with the default --max-pending-age: %q", r.Problems)
	}
	table, _, code, _ = runStatusBinary(t, bin, env, "status")
	first := strings.SplitN(table, "\n", 2)[0]
	if code != 5 || !strings.Contains(first, "DEGRADED: ") || !strings.Contains(first, "no active consumer") {
		t.Errorf("degraded table: exit %d, first line %q", code, first)
	}
	if _, stderr, code, _ := runStatusBinary(t, bin, env, "status", "--max-pending-age", "0s"); code != 1 || !strings.Contains(stderr, "--max-pending-age") {
		t.Errorf("--max-pending-age 0s: exit %d stderr %q", code, stderr)
	}
}
