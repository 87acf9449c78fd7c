package status

import (
	"encoding/json"
	"strings"
	"testing"
)

// `cdc status` checks the publication as `cdc run` does, and reports a
// problem with its fix as a field and a warning without changing the exit
// code; the version-specific slot columns are read wherever the server has
// them (the test runs on any version and asserts what that one has).
func TestGatherPublicationAndVersionFields(t *testing.T) {
	e := newEnv(t)
	e.createSlot(t)
	o := e.opts
	o.Publication = "cdc_outbox"

	r := gather(t, o)
	if r.SlotExists != true || r.Publication != "cdc_outbox" || r.PublicationError != nil || hasWarning(r, "publication") || hasProblem(r, `publication "`) {
		t.Fatalf("healthy: exit %d publication %q error %v warnings %q", r.ExitCode, r.Publication, r.PublicationError, r.Warnings)
	}
	v := *r.PostgresVersionNum
	s := r.SlotInfo
	for _, c := range []struct {
		name  string
		since int
		read  bool
	}{
		{"conflicting", pg16, s.Conflicting != nil},
		{"inactive_since", pg17, s.InactiveSince != nil},
		{"failover", pg17, s.Failover != nil},
		{"synced", pg17, s.Synced != nil},
	} {
		if c.read != (v >= c.since) {
			t.Errorf("%s read = %v on %d, want %v", c.name, c.read, v, v >= c.since)
		}
	}
	if s.InvalidationReason != nil || (s.Conflicting != nil && *s.Conflicting) {
		t.Errorf("a fresh slot: invalidation_reason %v conflicting %v", s.InvalidationReason, s.Conflicting)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"publication", "publication_error", "conflicting", "invalidation_reason", "inactive_since", "failover", "synced"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}

	e.exec(t, `ALTER PUBLICATION cdc_outbox DROP TABLE event_outbox`)
	r = gather(t, o)
	if r.PublicationError == nil || !strings.Contains(*r.PublicationError, `does not contain the outbox table "public"."event_outbox"`) ||
		!strings.Contains(*r.PublicationError, `ALTER PUBLICATION "cdc_outbox" ADD TABLE`) || !hasWarning(r, "does not contain the outbox table") {
		t.Errorf("publication_error %v, warnings %q: want the problem and its fix", r.PublicationError, r.Warnings)
	}
	// cdc run would refuse to stream: a problem (exit 5), not a slot error.
	if r.ExitCode != Degraded || !hasProblem(r, "does not contain the outbox table") {
		t.Errorf("exit code %d, problems %q: want the publication problem, exit 5", r.ExitCode, r.Problems)
	}

	o.Publication = ""
	if r := gather(t, o); r.PublicationError != nil {
		t.Errorf("publication not configured, yet publication_error %q", *r.PublicationError)
	}
}
