package main

import (
	"strings"
	"testing"
	"time"
)

// A mistyped CDC_* variable stops every subcommand at start, naming the
// variable and the key it probably meant, instead of leaving the key at its
// default without a word. The test environment's own CDC_TEST_* variables
// (inherited from `scripts/testenv.sh env`) must keep passing.
func TestUnknownEnvVariableFailsAtStart(t *testing.T) {
	bin := cdcBinary(t)
	env := []string{"CDC_POSTGRES_URL=postgres://nobody@127.0.0.1:1/x", "CDC_TEST_SOMETHING=1"}
	for _, args := range [][]string{{"run"}, {"migrate"}, {"status"}, {"retry-failed"}} {
		t.Run(args[0], func(t *testing.T) {
			out, code, took := runWithArgs(t, bin, append(env, "CDC_BATCH_SISE=5"), 20*time.Second, args...)
			want := "cdc: unknown environment variable CDC_BATCH_SISE (did you mean CDC_BATCH_SIZE?)"
			if code != 1 || !strings.Contains(out, want) {
				t.Fatalf("cdc %s with CDC_BATCH_SISE=5: exit %d after %s, want 1 and %q; output:\n%s", args[0], code, took, want, out)
			}
		})
	}
	// The same environment without the typo gets past the configuration
	// (and fails later, on the unreachable server).
	out, _, _ := runWithArgs(t, bin, env, 20*time.Second, "status")
	if strings.Contains(out, "unknown environment variable") {
		t.Fatalf("cdc status rejected a known variable:\n%s", out)
	}
}
