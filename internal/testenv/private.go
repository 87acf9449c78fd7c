package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Servers is a private PostgreSQL + ClickHouse pair started for one test,
// for tests that stop, kill or restart servers: doing that to the shared
// servers would break the tests running beside them.
type Servers struct {
	PGURL  string // database "cdc"
	CHAddr string
	dir    string
	scripted
}

// StartPrivate starts servers in their own directory on free ports. They
// are stopped and removed when the test ends.
func StartPrivate(t testing.TB, name string) *Servers {
	t.Helper()
	return startPrivateWith(t, name, "up", nil)
}

// StartPrivateClickHouse starts only the ClickHouse server of StartPrivate
// (PGURL is empty), for tests that bring their own PostgreSQL, such as a
// StartCluster pair. Script(t, "ch-stop") and "ch-start" work on it.
func StartPrivateClickHouse(t testing.TB, name string) *Servers {
	t.Helper()
	s := startPrivateWith(t, name, "ch-start", nil)
	s.PGURL = ""
	return s
}

// startPrivateWith runs prepare(dir), when given, in the servers' fresh
// directory before they start: files testenv.sh leaves alone, such as
// ClickHouse's ch/config.d and ch/users.d.
func startPrivateWith(t testing.TB, name, up string, prepare func(dir string)) *Servers {
	t.Helper()
	script := mustEnv(t, EnvScript)
	dir := serverDir(t, name)
	ports := FreePorts(t, 4)
	pg, ch := ports[0], ports[1]
	s := &Servers{
		PGURL:  fmt.Sprintf("postgres://postgres@127.0.0.1:%d/cdc?sslmode=disable", pg),
		CHAddr: fmt.Sprintf("127.0.0.1:%d", ch),
		dir:    dir,
		scripted: scripted{what: "private servers", script: script, env: append(os.Environ(),
			"CDC_TESTENV_DIR="+dir,
			fmt.Sprintf("CDC_TESTENV_PGPORT=%d", pg),
			fmt.Sprintf("CDC_TESTENV_CHPORT=%d", ch),
			fmt.Sprintf("CDC_TESTENV_CHHTTPPORT=%d", ports[2]),
			fmt.Sprintf("CDC_TESTENV_CHINTERPORT=%d", ports[3]),
		)},
	}
	t.Cleanup(func() { s.stopAndRemove(t, dir, "down") })
	if prepare != nil {
		prepare(dir)
	}
	s.Script(t, up)
	return s
}

// scripted runs scripts/testenv.sh with the environment that points it at
// one set of private servers (Servers, CHCluster).
type scripted struct {
	what   string // for errors: "private servers", "cluster <addrs>"
	script string
	env    []string
}

// Script runs scripts/testenv.sh against these servers (up, down, ch-stop,
// ch-start, pg-restart; the cluster-* commands for a CHCluster).
func (s *scripted) Script(t testing.TB, args ...string) {
	t.Helper()
	if err := s.run(args...); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

func (s *scripted) run(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.script, args...)
	cmd.Env = s.env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %s %s: %w\n%s", s.what, s.script, strings.Join(args, " "), err, out)
	}
	return nil
}

// stopAndRemove, for t.Cleanup, stops the servers with the script's down
// command and removes their directory, which is kept (and named in the
// log) when the test failed: their logs are in it.
func (s *scripted) stopAndRemove(t testing.TB, dir, down string) {
	if err := s.run(down); err != nil {
		t.Errorf("testenv: stop %s: %v", s.what, err)
	}
	if t.Failed() {
		t.Logf("testenv: %s: files kept in %s", s.what, dir)
		return
	}
	os.RemoveAll(dir)
}

// serverDir makes a fresh directory for servers of test name. The servers
// run as their own users (postgres, clickhouse), which must reach it.
func serverDir(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "outbox-cdc-"+name+"-")
	if err != nil {
		t.Fatalf("testenv: server dir: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testenv: server dir: %v", err)
	}
	return dir
}

// SetSynchronousStandbyNames sets the server-wide synchronous_standby_names
// of the private PostgreSQL ("" resets it) and reloads the configuration:
// the reason such tests need a server of their own.
func (s *Servers) SetSynchronousStandbyNames(t testing.TB, names string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := Connect(t, s.PGURL)
	defer conn.Close(context.Background())
	set := `ALTER SYSTEM RESET synchronous_standby_names`
	if names != "" {
		// ALTER SYSTEM takes no parameters: a quoted literal.
		set = `ALTER SYSTEM SET synchronous_standby_names = '` + strings.ReplaceAll(names, "'", "''") + `'`
	}
	for _, sql := range []string{set, `SELECT pg_reload_conf()`} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("testenv: %s: %v", sql, err)
		}
	}
}

// FreePorts returns n distinct ports that were free a moment ago.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testenv: free port: %v", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int { return FreePorts(t, 1)[0] }
