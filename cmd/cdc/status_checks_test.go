package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// The table and --json show the publication check and the version-specific
// slot columns; a publication problem is shown with its fix and leaves the
// exit code at 0.
func TestStatusShowsPublicationAndVersionColumns(t *testing.T) {
	f := newStatusFixture(t, true)
	ctx := context.Background()
	out, err := runStatusCmd(ctx, t, "--config", f.config)
	t.Logf("output:\n%s", out)
	if code := exitCodeOf(err); code != 5 { // degraded: no consumer, a failed row
		t.Fatalf("status: exit %d (%v), want 5", code, err)
	}
	for _, want := range []string{"publication", "cdc_outbox: publishes the outbox", "conflicting", "failover / synced"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}

	if _, err := f.pg.Exec(ctx, `ALTER PUBLICATION cdc_outbox DROP TABLE event_outbox`); err != nil {
		t.Fatal(err)
	}
	out, err = runStatusCmd(ctx, t, "--config", f.config)
	t.Logf("output:\n%s", out)
	if code := exitCodeOf(err); code != 5 || !strings.Contains(err.Error(), "does not contain the outbox table") {
		t.Errorf("exit code %d (%v) with a publication problem, want 5 naming it", code, err)
	}
	if !strings.Contains(out, `publication "cdc_outbox" does not contain the outbox table`) ||
		!strings.Contains(out, `ALTER PUBLICATION "cdc_outbox" ADD TABLE "public"."event_outbox"`) {
		t.Error("table does not show the publication problem and its fix")
	}
	// Once in the verdict (the first line), once in its section; not again
	// among the warnings.
	if strings.Count(out, "does not contain the outbox table") != 2 {
		t.Error("the publication problem is shown other than in the verdict and in its section")
	}

	out, err = runStatusCmd(ctx, t, "--config", f.config, "--json")
	if code := exitCodeOf(err); code != 5 {
		t.Errorf("--json exit code %d, want 5", code)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if p, _ := m["publication_error"].(string); m["publication"] != "cdc_outbox" || !strings.Contains(p, "ADD TABLE") {
		t.Errorf("publication %v publication_error %v", m["publication"], m["publication_error"])
	}
	for _, k := range []string{"conflicting", "invalidation_reason", "inactive_since", "failover", "synced", "state", "exit_code", "warnings"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
}
