package testenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestCluster fails over twice (the second time to a standby re-made by
// AddStandby) and checks that every acknowledged commit survives, that the
// multi-host URL follows the primary and that the promoted node takes
// writes at once. Both ways of making a standby are run: pg_basebackup and,
// through a bin dir without it (like the npm-packaged servers), a cold copy.
func TestCluster(t *testing.T) {
	pgbin := mustEnv(t, EnvPGBin)
	for _, tc := range []struct {
		name   string
		binDir func(t *testing.T) string
	}{
		{"basebackup", func(t *testing.T) string { return pgbin }},
		{"coldcopy", func(t *testing.T) string { return binDirWithout(t, pgbin, "pg_basebackup") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := StartCluster(t, "clustertest", ClusterOptions{BinDir: tc.binDir(t)})
			if c.Major() < 10 {
				t.Fatalf("major %d", c.Major())
			}
			conn := Connect(t, c.URL())
			mustExec(t, conn, `CREATE TABLE t (id int PRIMARY KEY)`)
			mustExec(t, conn, `INSERT INTO t SELECT generate_series(1, 100)`)
			var syncNames string
			if err := conn.QueryRow(context.Background(), `SHOW synchronous_standby_names`).Scan(&syncNames); err != nil || syncNames != standbyName {
				t.Fatalf("synchronous_standby_names = %q, %v", syncNames, err)
			}
			conn.Close(context.Background())

			for round, wantRows := range []int{100, 200} {
				first := c.PrimaryURL()
				c.Failover(t)
				if c.PrimaryURL() == first {
					t.Fatalf("round %d: primary did not change", round)
				}
				if c.StandbyURL() != "" {
					t.Fatalf("round %d: a standby after Failover: %s", round, c.StandbyURL())
				}
				conn := Connect(t, c.URL())
				var inRecovery bool
				var port, rows int
				err := conn.QueryRow(context.Background(), `SELECT pg_is_in_recovery(), current_setting('port')::int, (SELECT count(*) FROM t)`).Scan(&inRecovery, &port, &rows)
				if err != nil || inRecovery || rows != wantRows || c.PrimaryURL() != c.nodeURL(&pgNode{port: port}, ClusterDB) {
					t.Fatalf("round %d: through URL: in recovery %v, port %d, %d rows (want %d), err %v; primary is %s",
						round, inRecovery, port, rows, wantRows, err, c.PrimaryURL())
				}
				// No synchronous standby is left to wait for: this must not hang.
				mustExec(t, conn, `INSERT INTO t SELECT generate_series($1::int + 1, $1::int + 100)`, wantRows)
				conn.Close(context.Background())
				c.AddStandby(t)
			}
			c.RestartPrimary(t)
			conn = Connect(t, c.URL())
			defer conn.Close(context.Background())
			var rows int
			if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM t`).Scan(&rows); err != nil || rows != 300 {
				t.Fatalf("after restart: %d rows, %v", rows, err)
			}
			standby := Connect(t, c.StandbyURL())
			defer standby.Close(context.Background())
			deadline := time.Now().Add(30 * time.Second)
			for {
				if err := standby.QueryRow(context.Background(), `SELECT count(*) FROM t`).Scan(&rows); err == nil && rows == 300 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("standby has %d rows, want 300", rows)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// binDirWithout is a bin dir of symlinks to pgbin's tools, except the
// named ones.
func binDirWithout(t *testing.T, pgbin string, without ...string) string {
	t.Helper()
	dir := serverDir(t, "pgbin") // the postgres user runs them
	t.Cleanup(func() { os.RemoveAll(dir) })
	entries, err := os.ReadDir(pgbin)
	if err != nil {
		t.Fatal(err)
	}
	skip := map[string]bool{}
	for _, w := range without {
		skip[w] = true
	}
	for _, e := range entries {
		if !skip[e.Name()] {
			if err := os.Symlink(filepath.Join(pgbin, e.Name()), filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestClusterFailoverSlots checks the PostgreSQL 17+ failover-slot set-up:
// a logical slot created with failover = true on the primary is synced to
// the standby and usable on it once promoted. On an older CDC_TEST_PGBIN
// there is nothing to check (the test matrix runs it on 17 and 18).
func TestClusterFailoverSlots(t *testing.T) {
	pgbin := mustEnv(t, EnvPGBin)
	major := binMajor(t, pgbin)
	if major < 17 {
		t.Logf("failover slots need PostgreSQL 17+, %s is %d: nothing to check", pgbin, major)
		return
	}
	c := StartCluster(t, "failoverslots", ClusterOptions{BinDir: pgbin, FailoverSlots: true})
	ctx := context.Background()
	primary := Connect(t, c.URL())
	mustExec(t, primary, `SELECT pg_create_logical_replication_slot('fs', 'pgoutput', false, false, true)`)
	mustExec(t, primary, `CREATE TABLE t (id int PRIMARY KEY)`)
	mustExec(t, primary, `INSERT INTO t SELECT generate_series(1, 10)`)
	standby := Connect(t, c.StandbyURL())
	deadline := time.Now().Add(60 * time.Second)
	for {
		// The standby creates its copy only once the primary's slot needs
		// no older catalog rows than the standby keeps: a consumer (cdc,
		// in real use) must move the slot on. A running-xacts record lets
		// the copy reach a consistent point before the next checkpoint.
		mustExec(t, primary, `SELECT pg_replication_slot_advance('fs', pg_current_wal_lsn())`)
		mustExec(t, primary, `SELECT pg_log_standby_snapshot()`)
		var synced bool
		err := standby.QueryRow(ctx, `SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = 'fs'`).Scan(&synced)
		if err == nil && synced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot fs not synced to the standby after 60s (err %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	standby.Close(ctx)
	primary.Close(ctx)
	c.Failover(t)
	conn := Connect(t, c.URL())
	defer conn.Close(ctx)
	var reason string
	if err := conn.QueryRow(ctx, `SELECT coalesce(invalidation_reason, '') FROM pg_replication_slots WHERE slot_name = 'fs'`).Scan(&reason); err != nil || reason != "" {
		t.Fatalf("slot fs on the promoted standby: invalidation %q, err %v", reason, err)
	}
	mustExec(t, conn, `SELECT pg_replication_slot_advance('fs', pg_current_wal_lsn())`)
	c.AddStandby(t) // a new physical slot on the new primary
}

// binMajor is the major version of pgbin's postgres.
func binMajor(t *testing.T, pgbin string) int {
	t.Helper()
	out, err := exec.Command(filepath.Join(pgbin, "postgres"), "--version").Output()
	if err != nil {
		t.Fatalf("%s/postgres --version: %v", pgbin, err)
	}
	// "postgres (PostgreSQL) 17.10"
	f := strings.Fields(string(out))
	major, err := strconv.Atoi(strings.SplitN(f[len(f)-1], ".", 2)[0])
	if err != nil {
		t.Fatalf("postgres --version: %q", out)
	}
	return major
}
