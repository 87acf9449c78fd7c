package config

import (
	"fmt"
	"slices"
	"strings"
)

// nonKeyEnv lists the CDC_* variables that are not configuration keys but
// may be set where cdc runs, so [CheckEnv] must let them pass. Every other
// CDC_* variable is a typo or a key that does not exist, and fails the start
// like an unknown key in the file does.
//
//   - CDC_TEST_*, CDC_TESTENV_*: the test servers' addresses and paths
//     (scripts/testenv.sh env); tests start the binary with them inherited.
//   - CDC_SERVICE_*, CDC_PORT, CDC_PORT_*: Kubernetes' service links for a
//     Service named "cdc" (deploy/k8s turns them off with
//     enableServiceLinks: false, but a user's own manifest may not).
//   - the rest: knobs of this repository's scripts and long tests, set in a
//     shell that also starts cdc (scripts/demo.sh, scripts/pg.sh,
//     scripts/chdb.sh, cmd/cdc's soak tests, docker-compose.yml's build).
var nonKeyEnv = struct{ prefixes, names []string }{
	prefixes: []string{"CDC_TEST_", "CDC_TESTENV_", "CDC_SERVICE_", "CDC_PORT_"},
	names: []string{
		"CDC_PORT",
		"CDC_BIN", "CDC_PID", "CDC_DEMO_DIR",
		"CDC_PG_NPM_VERSION", "CDC_PG_CACHE", "CDC_CHDB_VERSION", "CDC_CHDB_CACHE",
		"CDC_VERSION", "CDC_COMMIT",
		"CDC_FENCE_ROWS", "CDC_FENCE_RUNS", "CDC_CLUSTER_RUNS", "CDC_FAILOVER_RUNS",
		"CDC_TORTURE_KILLS", "CDC_TORTURE_FAILOVERS", "CDC_TORTURE_CLUSTER_STEPS", "CDC_VERIFY_BENCH_ROWS", "CDC_DECODER_CAPTURE",
	},
}

// CheckEnv rejects the first CDC_* variable in environ ("NAME=value"
// entries, as from os.Environ) that names no key and is not one of the
// non-key variables above, with the did-you-mean the YAML file's unknown
// keys get: CDC_BATCH_SISE=5 would otherwise leave batch.size at its
// default without a word. An empty variable counts as unset, as for keys.
func CheckEnv(environ []string) error {
	unknown := UnknownEnv(environ)
	if len(unknown) == 0 {
		return nil
	}
	name := unknown[0]
	return fmt.Errorf("unknown environment variable %s%s: CDC_<SECTION>_<KEY> variables must name a key of docs/configuration.md", name, suggestEnv(name))
}

// UnknownEnv returns, in the order given, the names of the non-empty CDC_*
// variables in environ that match no key and are not known non-key
// variables (see [CheckEnv]).
func UnknownEnv(environ []string) []string {
	known := make(map[string]bool, len(specs))
	for _, s := range specs {
		known[EnvVar(s.key)] = true
	}
	var unknown []string
	for _, kv := range environ {
		name, val, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix+"_") || known[name] || val == "" || isNonKeyEnv(name) {
			continue
		}
		unknown = append(unknown, name)
	}
	return unknown
}

func isNonKeyEnv(name string) bool {
	if slices.Contains(nonKeyEnv.names, name) {
		return true
	}
	for _, p := range nonKeyEnv.prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// suggestEnv returns ` (did you mean CDC_BATCH_SIZE?)` for a near miss of a
// key's variable, with the same distance limit as [suggest], or "".
func suggestEnv(bad string) string {
	best, bestDist := "", 1<<30
	for _, s := range specs {
		if d := levenshtein(bad, EnvVar(s.key)); d < bestDist {
			best, bestDist = EnvVar(s.key), d
		}
	}
	if best == "" || bestDist > max(2, len(bad)/4) {
		return ""
	}
	return " (did you mean " + best + "?)"
}
