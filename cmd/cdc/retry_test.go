package main

import (
	"context"
	"strings"
	"testing"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// `cdc retry-failed` tells the operator by its exit code whether rows are
// still failing (5), and refuses flags it cannot honour (2) before it
// touches a server.
func TestRetryFailedExitCodes(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	// One row ClickHouse accepts, one it rejects again (DateTime on
	// ClickHouse 18 cannot hold 1950), both failed once before.
	if _, err := o.PG.Exec(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version, status, attempts, last_error)
		VALUES ('fine', now(), 'test', '{}', 1, 'failed', 1, 'earlier outage'), ('old', '1950-01-01', 'test', '{}', 1, 'failed', 1, 'earlier outage')`); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name       string
		args       []string
		code       int
		stdout     string
		stderr     string
		wantFailed int64
	}{
		{"negative max-attempts", []string{"--max-attempts", "-1"}, 2, "", "--max-attempts must be 0 (every failed row) or a positive number", 2},
		{"one row still failing", nil, 5, "re-sent 2 failed rows: 1 delivered, 1 still failing", "1 rows still failing", 1},
		{"again: still failing", nil, 5, "re-sent 1 failed rows: 0 delivered, 1 still failing", "see last_error in public.event_outbox", 1},
	}
	for _, tc := range cases {
		stdout, stderr, code, _ := runStatusBinary(t, bin, o.Env(), append([]string{"retry-failed"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stdout, tc.stdout) || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
				tc.name, code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
		}
		if got := o.StatusCounts()["failed"]; got != tc.wantFailed {
			t.Errorf("%s: %d rows failed after the run, want %d", tc.name, got, tc.wantFailed)
		}
	}
	// Once nothing fails any more, exit 0.
	if _, err := o.PG.Exec(ctx, `DELETE FROM event_outbox WHERE event_type = 'old'`); err != nil {
		t.Fatal(err)
	}
	if stdout, stderr, code, _ := runStatusBinary(t, bin, o.Env(), "retry-failed"); code != 0 {
		t.Errorf("nothing failing: exit %d, stdout %q, stderr %q; want 0", code, stdout, stderr)
	}
}
