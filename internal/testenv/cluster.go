package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a private PostgreSQL primary with a synchronous streaming
// standby, started for one test that fails over: every commit the primary
// acknowledges is on the standby first (synchronous_standby_names names it,
// synchronous_commit = on), so promoting the standby after an immediate stop
// of the primary loses nothing a client was told is committed.
//
// Both nodes listen on 127.0.0.1 on free ports, live in their own /tmp
// directory and run as the `postgres` OS user when the test runs as root
// (initdb refuses root). Node 0 starts as the primary, node 1 as its standby.
// URL lists both nodes with target_session_attrs=read-write, so a client on
// it (pgx, normal and replication connections alike) reaches whichever node
// is the primary now: the same URL keeps working through Failover and
// AddStandby, which re-uses the old primary's port.
//
// The standby is made with `pg_basebackup -R -X stream` when BinDir has that
// binary, else (the npm-packaged 14–18 servers ship none) by a cold copy of
// the cleanly stopped primary plus standby.signal and primary_conninfo.
type Cluster struct {
	t       testing.TB
	opts    ClusterOptions
	dir     string
	major   int
	osUser  *user.User // nil: run the server tools as ourselves
	nodes   [2]*pgNode
	primary int  // index into nodes
	standby bool // the other node runs as the primary's standby
}

// ClusterOptions configures StartCluster; the zero value is a PostgreSQL 15
// pair from CDC_TEST_PGBIN.
type ClusterOptions struct {
	// BinDir holds initdb, pg_ctl and postgres (and, optionally,
	// pg_basebackup) of the major to test. Default: CDC_TEST_PGBIN
	// (Debian's PostgreSQL 15 on these machines).
	BinDir string
	// FailoverSlots sets up PostgreSQL 17+ failover slots: the standby
	// streams through a physical slot (primary_slot_name), runs with
	// hot_standby_feedback = on and sync_replication_slots = on (its
	// primary_conninfo names dbname, which the slot sync worker needs), and
	// the primary lists that physical slot in synchronized_standby_slots, so
	// a logical consumer is never ahead of the standby. Logical slots
	// created with FAILOVER true are then carried over to the promoted
	// standby. Requires a server of major 17 or later.
	FailoverSlots bool
	// Settings are extra postgresql.conf lines for both nodes, e.g.
	// "wal_sender_timeout = 10s".
	Settings []string
}

// ClusterDB is the database StartCluster creates for the test.
const ClusterDB = "cdc"

// standbySlot is the physical slot the standby streams through with
// FailoverSlots; standbyName is its application_name on the primary.
const (
	standbySlot = "cdc_standby"
	standbyName = "standby"
)

type pgNode struct {
	name string
	port int
	dir  string // owned by the server's OS user: data/, run/, postgres.log
}

func (n *pgNode) data() string { return filepath.Join(n.dir, "data") }
func (n *pgNode) sock() string { return filepath.Join(n.dir, "run") }
func (n *pgNode) log() string  { return filepath.Join(n.dir, "postgres.log") }

// StartCluster starts a primary and its synchronous standby, creates
// database ClusterDB on them and returns once the standby is in sync. Both
// nodes are stopped when the test ends; their files are removed unless the
// test failed.
func StartCluster(t testing.TB, name string, opts ClusterOptions) *Cluster {
	t.Helper()
	if opts.BinDir == "" {
		opts.BinDir = mustEnv(t, EnvPGBin)
	}
	for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, b)); err != nil {
			t.Fatalf("testenv: cluster: %s not found in %s (set ClusterOptions.BinDir or %s): %v", b, opts.BinDir, EnvPGBin, err)
		}
	}
	dir := serverDir(t, "cluster-"+name)
	c := &Cluster{t: t, opts: opts, dir: dir}
	if os.Geteuid() == 0 {
		var err error
		if c.osUser, err = user.Lookup("postgres"); err != nil {
			t.Fatalf("testenv: cluster: initdb refuses root and there is no `postgres` OS user: %v", err)
		}
	}
	ports := FreePorts(t, 2)
	for i := range c.nodes {
		c.nodes[i] = &pgNode{name: fmt.Sprintf("node%d", i), port: ports[i], dir: filepath.Join(dir, fmt.Sprintf("node%d", i))}
	}
	t.Cleanup(c.cleanup)

	p := c.nodes[0]
	c.initNode(p)
	if opts.FailoverSlots && c.major < 17 {
		t.Fatalf("testenv: cluster: FailoverSlots needs PostgreSQL 17 or later, %s is %d", opts.BinDir, c.major)
	}
	// Without a standby yet, synchronous_standby_names would hold every
	// commit (CREATE DATABASE included): the primary starts asynchronous
	// and turns synchronous once its standby streams.
	c.writeConf(p, c.primaryConf(p, false))
	c.startNode(p)
	c.exec(p, "postgres", "CREATE DATABASE "+ClusterDB)
	c.AddStandby(t)
	return c
}

// URL is the multi-host URL of database ClusterDB: it reaches the current
// primary, whichever node that is.
func (c *Cluster) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write",
		c.nodes[0].port, c.nodes[1].port, ClusterDB)
}

// PrimaryURL is the URL of database ClusterDB on the current primary only.
func (c *Cluster) PrimaryURL() string { return c.nodeURL(c.nodes[c.primary], ClusterDB) }

// StandbyURL is the URL of database ClusterDB on the standby (read-only);
// empty when there is no standby (after Failover, before AddStandby).
func (c *Cluster) StandbyURL() string {
	if !c.standby {
		return ""
	}
	return c.nodeURL(c.nodes[1-c.primary], ClusterDB)
}

// Dir is the cluster's directory: node0/ and node1/, each with data/ and
// postgres.log.
func (c *Cluster) Dir() string { return c.dir }

// Major is the servers' major version.
func (c *Cluster) Major() int { return c.major }

// Failover stops the primary the hard way (`pg_ctl stop -m immediate`: no
// shutdown checkpoint, clients see their connections drop) and promotes the
// standby (`pg_ctl promote -w`). The promoted node runs without a
// synchronous standby until AddStandby; URL reaches it as soon as Failover
// returns.
func (c *Cluster) Failover(t testing.TB) {
	t.Helper()
	if !c.standby {
		t.Fatalf("testenv: cluster: Failover without a standby (call AddStandby after a failover)")
	}
	old, next := c.nodes[c.primary], c.nodes[1-c.primary]
	c.pgctl(old, "stop", "-m", "immediate", "-w", "-t", "60")
	// Its own configuration as a primary: no synchronous standby (it has
	// none: commits would wait forever), no standby slot to wait for.
	c.writeConf(next, c.primaryConf(next, false))
	c.pgctl(next, "promote", "-w", "-t", "60")
	c.pgctl(next, "reload")
	c.primary, c.standby = 1-c.primary, false
	c.waitPrimary(next)
	t.Logf("testenv: cluster: failed over from %s (127.0.0.1:%d) to %s (127.0.0.1:%d)", old.name, old.port, next.name, next.port)
}

// AddStandby makes the node that is not the primary (after a Failover: the
// old primary, its files discarded) a new synchronous standby of the
// primary, on the same port, and waits until the primary reports it in
// sync. Without pg_basebackup in BinDir the primary is stopped cleanly for
// the copy and started again: its clients see a restart.
func (c *Cluster) AddStandby(t testing.TB) {
	t.Helper()
	if c.standby {
		t.Fatalf("testenv: cluster: AddStandby while a standby runs")
	}
	p, s := c.nodes[c.primary], c.nodes[1-c.primary]
	if c.running(s) {
		c.pgctl(s, "stop", "-m", "immediate", "-w", "-t", "60")
	}
	if err := os.RemoveAll(s.dir); err != nil {
		t.Fatalf("testenv: cluster: remove %s: %v", s.dir, err)
	}
	c.mkNodeDir(s)
	if c.opts.FailoverSlots {
		c.exec(p, "postgres", fmt.Sprintf(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '%s'`, standbySlot))
		c.exec(p, "postgres", fmt.Sprintf(`SELECT pg_create_physical_replication_slot('%s', true)`, standbySlot))
	}
	start := time.Now()
	basebackup := filepath.Join(c.opts.BinDir, "pg_basebackup")
	if _, err := os.Stat(basebackup); err == nil {
		args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", "postgres", "-D", s.data(), "-R", "-X", "stream", "-c", "fast", "--no-sync"}
		if c.opts.FailoverSlots {
			args = append(args, "-S", standbySlot)
		}
		c.run(basebackup, args...)
	} else {
		c.coldCopy(p, s)
	}
	// The standby's settings (port, primary_conninfo with dbname, slot
	// options) in its cluster.conf; postgresql.auto.conf (where -R writes
	// its own primary_conninfo, without dbname before 17) is read after
	// it and would win, so the same line goes there last.
	c.writeConf(s, c.standbyConf(s, p))
	c.appendAutoConf(s, "primary_conninfo = '"+c.conninfo(p)+"'")
	if err := os.WriteFile(filepath.Join(s.data(), "standby.signal"), nil, 0o600); err != nil {
		t.Fatalf("testenv: cluster: standby.signal: %v", err)
	}
	c.chown(filepath.Join(s.data(), "standby.signal"))
	c.startNode(s)
	c.standby = true
	// Now that a standby streams, every commit waits for it.
	c.writeConf(p, c.primaryConf(p, true))
	c.pgctl(p, "reload")
	c.waitSync(p)
	t.Logf("testenv: cluster: %s (127.0.0.1:%d) is a synchronous standby of %s (127.0.0.1:%d), made in %s",
		s.name, s.port, p.name, p.port, time.Since(start).Round(time.Millisecond))
}

// RestartPrimary restarts the primary with `-m immediate` (a crash and
// recovery); the standby reconnects by itself.
func (c *Cluster) RestartPrimary(t testing.TB) {
	t.Helper()
	p := c.nodes[c.primary]
	c.pgctl(p, "restart", "-m", "immediate", "-w", "-t", "60", "-l", p.log())
	c.waitPrimary(p)
}

// ---------------------------------------------------------------- set-up steps

func (c *Cluster) initNode(n *pgNode) {
	c.mkNodeDir(n)
	c.run(filepath.Join(c.opts.BinDir, "initdb"), "-D", n.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
	v, err := os.ReadFile(filepath.Join(n.data(), "PG_VERSION"))
	if err != nil {
		c.t.Fatalf("testenv: cluster: %v", err)
	}
	if c.major, err = strconv.Atoi(strings.TrimSpace(string(v))); err != nil {
		c.t.Fatalf("testenv: cluster: PG_VERSION %q: %v", v, err)
	}
	f, err := os.OpenFile(filepath.Join(n.data(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		c.t.Fatalf("testenv: cluster: %v", err)
	}
	// cluster.conf holds the node's role-specific settings and is rewritten
	// on every role change; a standby copies this include line.
	_, err = f.WriteString("\n# Added by internal/testenv (cluster.go)\ninclude_if_exists = 'cluster.conf'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		c.t.Fatalf("testenv: cluster: postgresql.conf: %v", err)
	}
	hba := "# Test-only: trust everything local.\n" +
		"local all all trust\nlocal replication all trust\n" +
		"host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
	c.writeFile(filepath.Join(n.data(), "pg_hba.conf"), hba)
}

func (c *Cluster) mkNodeDir(n *pgNode) {
	for _, d := range []string{n.dir, n.sock()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			c.t.Fatalf("testenv: cluster: %v", err)
		}
		c.chown(d)
	}
}

// commonConf are the settings of both roles.
func (c *Cluster) commonConf(n *pgNode) []string {
	conf := []string{
		"port = " + strconv.Itoa(n.port),
		"listen_addresses = '127.0.0.1'",
		"unix_socket_directories = '" + n.sock() + "'",
		"wal_level = logical",
		"max_replication_slots = 20",
		"max_wal_senders = 20",
		"max_connections = 100",
		"wal_sender_timeout = 60s",
		// Synchronous replication needs synchronous_commit on: the
		// acknowledgement of a commit then waits for the standby's flush.
		"synchronous_commit = on",
		// The test stops servers, it never crashes the OS: fsync buys
		// nothing here. full_page_writes stays on (base backups need it).
		"fsync = off",
		"shared_buffers = 128MB",
		"max_wal_size = 1GB",
		"wal_keep_size = 512MB",
		"hot_standby = on",
		"log_min_messages = warning",
		"logging_collector = off",
	}
	return append(conf, c.opts.Settings...)
}

func (c *Cluster) primaryConf(n *pgNode, withStandby bool) []string {
	conf := c.commonConf(n)
	if withStandby {
		// By name: with '*' any walsender may be chosen, cdc's logical one
		// included (it connects first after a failover), and the standby
		// would then be only "potential": commits would wait for cdc, not
		// for the standby a failover promotes.
		conf = append(conf, "synchronous_standby_names = '"+standbyName+"'")
		if c.opts.FailoverSlots {
			conf = append(conf, "synchronized_standby_slots = '"+standbySlot+"'")
		}
	}
	return conf
}

func (c *Cluster) standbyConf(n, primary *pgNode) []string {
	conf := append(c.commonConf(n), "primary_conninfo = '"+c.conninfo(primary)+"'")
	if c.opts.FailoverSlots {
		conf = append(conf, "primary_slot_name = '"+standbySlot+"'", "hot_standby_feedback = on", "sync_replication_slots = on")
	}
	return conf
}

// conninfo is the standby's primary_conninfo; dbname is what the 17+ slot
// sync worker connects to.
func (c *Cluster) conninfo(primary *pgNode) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s application_name=%s", primary.port, ClusterDB, standbyName)
}

func (c *Cluster) writeConf(n *pgNode, lines []string) {
	c.writeFile(filepath.Join(n.data(), "cluster.conf"),
		"# Managed by internal/testenv (cluster.go): rewritten on every role change.\n"+strings.Join(lines, "\n")+"\n")
}

func (c *Cluster) appendAutoConf(n *pgNode, line string) {
	path := filepath.Join(n.data(), "postgresql.auto.conf")
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		c.t.Fatalf("testenv: cluster: %v", err)
	}
	c.writeFile(path, string(b)+"# Added by internal/testenv (cluster.go)\n"+line+"\n")
}

// coldCopy copies the primary's data directory while it is cleanly stopped:
// a consistent copy without pg_basebackup. Slots are not copied (a
// pg_basebackup leaves them out too): a copied logical slot would come back
// to life, stale, on promotion.
func (c *Cluster) coldCopy(p, s *pgNode) {
	c.pgctl(p, "stop", "-m", "fast", "-w", "-t", "60")
	c.run("cp", "-a", p.data(), s.data())
	entries, err := os.ReadDir(filepath.Join(s.data(), "pg_replslot"))
	if err != nil {
		c.t.Fatalf("testenv: cluster: %v", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(s.data(), "pg_replslot", e.Name())); err != nil {
			c.t.Fatalf("testenv: cluster: %v", err)
		}
	}
	for _, f := range []string{"postmaster.pid", "postmaster.opts"} {
		os.Remove(filepath.Join(s.data(), f))
	}
	c.startNode(p)
}

func (c *Cluster) startNode(n *pgNode) {
	c.pgctl(n, "start", "-w", "-t", "60", "-l", n.log())
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := c.connect(n, "postgres")
		if err == nil {
			conn.Close(context.Background())
			return
		}
		if time.Now().After(deadline) {
			c.fail(n, "not answering after 60s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitPrimary waits until n takes writes.
func (c *Cluster) waitPrimary(n *pgNode) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		var inRecovery bool
		conn, err := c.connect(n, ClusterDB)
		if err == nil {
			err = conn.QueryRow(context.Background(), "SELECT pg_is_in_recovery()").Scan(&inRecovery)
			conn.Close(context.Background())
		}
		if err == nil && !inRecovery {
			return
		}
		if time.Now().After(deadline) {
			c.fail(n, "not a primary after 60s (in recovery: %v, err: %v)", inRecovery, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitSync waits until primary p reports its standby streaming in sync.
func (c *Cluster) waitSync(p *pgNode) {
	deadline := time.Now().Add(60 * time.Second)
	var state string
	for {
		conn, err := c.connect(p, "postgres")
		if err == nil {
			err = conn.QueryRow(context.Background(),
				`SELECT coalesce(max(sync_state), '') FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'`, standbyName).Scan(&state)
			conn.Close(context.Background())
		}
		if err == nil && state == "sync" {
			return
		}
		if time.Now().After(deadline) {
			c.fail(c.nodes[1-c.primary], "standby not in sync after 60s (sync_state %q, err: %v)", state, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Cluster) cleanup() {
	for _, n := range c.nodes {
		if c.running(n) {
			if err := c.runErr("pg_ctl", filepath.Join(c.opts.BinDir, "pg_ctl"), "-D", n.data(), "stop", "-m", "immediate", "-w", "-t", "60"); err != nil {
				c.t.Errorf("testenv: cluster: stop %s: %v", n.name, err)
			}
		}
	}
	if c.t.Failed() {
		c.t.Logf("testenv: cluster files kept in %s (node*/postgres.log)", c.dir)
		return
	}
	os.RemoveAll(c.dir)
}

// ---------------------------------------------------------------- helpers

func (c *Cluster) nodeURL(n *pgNode, db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", n.port, db)
}

func (c *Cluster) connect(n *pgNode, db string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pgx.Connect(ctx, c.nodeURL(n, db))
}

func (c *Cluster) exec(n *pgNode, db, sql string) {
	conn, err := c.connect(n, db)
	if err != nil {
		c.fail(n, "connect: %v", err)
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if _, err := conn.Exec(ctx, sql); err != nil {
		c.fail(n, "%s: %v", sql, err)
	}
}

func (c *Cluster) running(n *pgNode) bool {
	if _, err := os.Stat(filepath.Join(n.data(), "postmaster.pid")); err != nil {
		return false
	}
	return c.runErr("pg_ctl", filepath.Join(c.opts.BinDir, "pg_ctl"), "-D", n.data(), "status") == nil
}

func (c *Cluster) pgctl(n *pgNode, args ...string) {
	if err := c.runErr("pg_ctl", filepath.Join(c.opts.BinDir, "pg_ctl"), append([]string{"-D", n.data()}, args...)...); err != nil {
		c.fail(n, "%v", err)
	}
}

// run runs a server tool as the server's OS user and fails the test when it
// fails.
func (c *Cluster) run(bin string, args ...string) {
	if err := c.runErr(filepath.Base(bin), bin, args...); err != nil {
		c.t.Fatalf("testenv: cluster: %v", err)
	}
}

func (c *Cluster) runErr(what, bin string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if c.osUser != nil {
		args = append([]string{"-u", c.osUser.Username, "--", bin}, args...)
		bin = runuser()
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	// pg_ctl's server inherits the directory; the server user must be able
	// to stay in it.
	cmd.Dir = c.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", what, strings.Join(args, " "), err, out)
	}
	return nil
}

func runuser() string {
	if p, err := exec.LookPath("runuser"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/runuser", "/sbin/runuser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "runuser"
}

func (c *Cluster) writeFile(path, content string) {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		c.t.Fatalf("testenv: cluster: %v", err)
	}
	c.chown(path)
}

// chown hands path to the server's OS user (a no-op when we are that user).
func (c *Cluster) chown(path string) {
	if c.osUser == nil {
		return
	}
	uid, _ := strconv.Atoi(c.osUser.Uid)
	gid, _ := strconv.Atoi(c.osUser.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		c.t.Fatalf("testenv: cluster: chown %s: %v", path, err)
	}
}

// fail ends the test with the last lines of n's server log.
func (c *Cluster) fail(n *pgNode, format string, args ...any) {
	c.t.Helper()
	b, _ := os.ReadFile(n.log())
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	c.t.Fatalf("testenv: cluster %s (127.0.0.1:%d): %s\nlast lines of %s:\n%s", n.name, n.port, fmt.Sprintf(format, args...), n.log(), strings.Join(lines, "\n"))
}
