package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// env is one scenario's private pair of databases on the shared servers: a
// PostgreSQL database and a ClickHouse database of the same name, migrated
// by the real `cdc migrate`.
type env struct {
	b     *bench
	name  string
	pgURL string
	pg    *pgxpool.Pool
	ch    driver.Conn
	// chAddr and chAdmin are the ClickHouse server the scenario uses: the
	// shared one, or a private one it may stop (newEnvOn).
	chAddr  string
	chAdmin driver.Conn
}

// dbURL returns base with its database replaced by name.
func dbURL(base, name string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("postgres url: %w", err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// envPrefix starts every benchmark database's name: envPrefix, the
// scenario, "_", the benchmark's pid (sweepStale relies on the pid last).
const envPrefix = "cdcbench_"

// newEnv creates fresh databases called name and migrates them.
func (b *bench) newEnv(ctx context.Context, name string) (*env, error) {
	return b.newEnvOn(ctx, name, b.cfg.chAddr, b.chAdmin)
}

// newEnvOn is newEnv with the ClickHouse server at chAddr (chAdmin: a
// connection to it without a database).
func (b *bench) newEnvOn(ctx context.Context, name, chAddr string, chAdmin driver.Conn) (*env, error) {
	name = fmt.Sprintf("%s%s_%d", envPrefix, name, os.Getpid())
	admin, err := pgx.Connect(ctx, b.cfg.pgURL)
	if err != nil {
		return nil, fmt.Errorf("connect postgres: %w", err)
	}
	defer admin.Close(ctx)
	if err := dropPGDatabase(ctx, admin, name); err != nil {
		return nil, err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, fmt.Errorf("create database %s: %w", name, err)
	}
	e := &env{b: b, name: name, chAddr: chAddr, chAdmin: chAdmin}
	b.cleanups = append(b.cleanups, e.drop)
	if e.pgURL, err = dbURL(b.cfg.pgURL, name); err != nil {
		return nil, err
	}
	if err := chAdmin.Exec(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
		return nil, fmt.Errorf("clickhouse drop database %s: %w", name, err)
	}
	if out, err := b.cdcCommand(ctx, e, nil, "migrate").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cdc migrate: %v\n%s", err, out)
	}
	pcfg, err := pgxpool.ParseConfig(e.pgURL)
	if err != nil {
		return nil, err
	}
	pcfg.MaxConns = 8
	if e.pg, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, err
	}
	e.ch, err = clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}, Auth: clickhouse.Auth{Database: name}, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	return e, nil
}

func dropPGDatabase(ctx context.Context, admin *pgx.Conn, name string) error {
	// Slots pin a database: drop them (and the sessions using them) first.
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name); err != nil {
		return fmt.Errorf("terminate walsenders of %s: %w", name, err)
	}
	for i := 0; ; i++ {
		_, err := admin.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`, name)
		if err == nil {
			break
		}
		if i > 50 {
			return fmt.Errorf("drop slots of %s: %w", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

func (e *env) drop(ctx context.Context) error {
	if e.pg != nil {
		e.pg.Close()
	}
	if e.ch != nil {
		e.ch.Close()
	}
	if e.b.cfg.keep {
		return nil
	}
	admin, err := pgx.Connect(ctx, e.b.cfg.pgURL)
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	err1 := dropPGDatabase(ctx, admin, e.name)
	err2 := e.chAdmin.Exec(ctx, "DROP DATABASE IF EXISTS "+e.name)
	return errors.Join(err1, err2)
}

// rowSQL inserts $2 outbox rows of about 300 bytes (the pgoutput Insert
// message; see rowBytes) numbered from $1.
const rowSQL = `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
SELECT (ARRAY['order.created','order.paid','user.signed_up','cart.updated'])[1 + (($1::bigint + g) % 4)],
       (now() AT TIME ZONE 'utc') - ((($1::bigint + g) % 3600) * interval '1 second'),
       'production',
       jsonb_build_object('order_id', $1::bigint + g, 'user_id', (($1::bigint + g) * 7919) % 1000003,
                          'amount', round(((($1::bigint + g) * 31) % 100000) / 100.0, 2), 'currency', 'EUR',
                          'sku', 'SKU-' || lpad(((($1::bigint + g) * 13) % 99991)::text, 6, '0'),
                          'note', 'benchmark payload of a realistic size'),
       1 + (($1::bigint + g) % 3)
FROM generate_series(1, $2::bigint) g`

// load commits rows in transactions of txnRows, one after another.
func (e *env) load(ctx context.Context, rows, txnRows int) error {
	conn, err := e.pg.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	for done := 0; done < rows; {
		n := min(txnRows, rows-done)
		if _, err := conn.Exec(ctx, rowSQL, int64(done), int64(n)); err != nil {
			return fmt.Errorf("load rows: %w", err)
		}
		done += n
	}
	return nil
}

// rowBytes measures the average size of a row: its pgoutput Insert message
// (text columns with 5 bytes of header each, 8 bytes of message header) and
// its on-disk tuple size.
func (e *env) rowBytes(ctx context.Context) (msg, tuple float64, err error) {
	err = e.pg.QueryRow(ctx, `SELECT avg(8 + 5 * 11 + octet_length(id::text) + octet_length(event_type) + 3 * octet_length(event_date_time::text)
	       + octet_length(environment) + octet_length(event_context::text) + octet_length(metadata_version::text)
	       + octet_length(status) + octet_length(attempts::text)), avg(pg_column_size(o.*))
	     FROM (SELECT * FROM event_outbox LIMIT 10000) o`).Scan(&msg, &tuple)
	return msg, tuple, err
}

func (e *env) chCount(ctx context.Context) (uint64, error) {
	var n uint64
	err := e.ch.QueryRow(ctx, "SELECT count() FROM events").Scan(&n)
	return n, err
}

// verify checks ClickHouse holds want rows, each once, and PostgreSQL marks
// them all processed.
func (e *env) verify(ctx context.Context, want int) error {
	var count, uniq uint64
	if err := e.ch.QueryRow(ctx, "SELECT count(), uniqExact(id) FROM events").Scan(&count, &uniq); err != nil {
		return err
	}
	var pending int64
	if err := e.pg.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE status IS DISTINCT FROM 'processed'`).Scan(&pending); err != nil {
		return err
	}
	if count != uint64(want) || uniq != uint64(want) || pending != 0 {
		return fmt.Errorf("verify %s: clickhouse count()=%d uniqExact(id)=%d, want %d; %d rows not processed", e.name, count, uniq, want, pending)
	}
	return nil
}

// waitDelivered polls until the outbox's last row is processed and returns
// when that was first seen. The writer inserts a batch before marking it and
// delivers batches in stream order, so the last id processed means every row
// is in ClickHouse and marked; verify checks that afterwards. Only this
// indexed lookup is polled: counting ClickHouse rows every few milliseconds
// (ClickHouse 18 reads a column for count()) would take CPU from the run
// being measured.
func (e *env) waitDelivered(ctx context.Context, want int, timeout time.Duration, alive func() error) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	var maxID int64
	if err := e.pg.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM event_outbox`).Scan(&maxID); err != nil {
		return time.Time{}, err
	}
	tick := time.NewTicker(e.b.cfg.poll)
	defer tick.Stop()
	for {
		var status string
		if err := e.pg.QueryRow(ctx, `SELECT status FROM event_outbox WHERE id = $1`, maxID).Scan(&status); err != nil {
			return time.Time{}, err
		}
		if status == "processed" {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			n, _ := e.chCount(ctx)
			return time.Time{}, fmt.Errorf("%s: not delivered after %s (clickhouse has %d of %d rows)", e.name, timeout, n, want)
		}
		if err := alive(); err != nil {
			return time.Time{}, err
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// ---------------------------------------------------------------- cdc process

func (b *bench) cdcCommand(ctx context.Context, e *env, extra []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, b.cfg.cdcBin, args...)
	cmd.Env = append(os.Environ(),
		"CDC_POSTGRES_URL="+e.pgURL,
		"CDC_CLICKHOUSE_ADDR="+e.chAddr,
		"CDC_CLICKHOUSE_DATABASE="+e.name,
		"CDC_POSTGRES_SLOT="+e.name, // slots are global: one per scenario
		"CDC_LOG_FORMAT=json",
	)
	cmd.Env = append(cmd.Env, extra...)
	return cmd
}

// cdcProc is a running `cdc run`.
type cdcProc struct {
	cmd     *exec.Cmd
	http    string
	log     string
	started time.Time
	done    chan struct{}
	err     error
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startCDC starts `cdc run` on e with the benchmark's settings plus extra
// CDC_* variables (later ones win).
func (b *bench) startCDC(ctx context.Context, e *env, tag string, extra ...string) (*cdcProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &cdcProc{http: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(b.cfg.workDir, e.name+"-"+tag+".log"), done: make(chan struct{})}
	vars := []string{
		"CDC_HTTP_LISTEN=" + p.http,
		"CDC_HTTP_PPROF=true",
		"CDC_LOG_LEVEL=" + b.cfg.logLevel,
		"CDC_BATCH_FLUSH_INTERVAL=" + b.cfg.flushInterval.String(),
		"CDC_REPLICATION_STANDBY_RETRY=200ms",
	}
	// Settings left unset run at cdc's defaults (issue 16: the benchmark
	// measures the configuration users run).
	for _, s := range []struct {
		env string
		v   int
	}{{"CDC_BATCH_SIZE", b.cfg.batchSize}, {"CDC_BATCH_MAX_ROWS", b.cfg.maxRows}, {"CDC_BATCH_QUEUE", b.cfg.queue}, {"CDC_RUNTIME_MAX_PROCS", b.cfg.maxProcs}} {
		if s.v >= 0 {
			vars = append(vars, s.env+"="+strconv.Itoa(s.v))
		}
	}
	vars = append(vars, b.cfg.cdcEnv...)
	vars = append(vars, extra...)
	logf, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	p.cmd = b.cdcCommand(context.Background(), e, vars, "run")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() {
		p.err = p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// alive returns an error once the process has exited.
func (p *cdcProc) alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("cdc exited early (%v); log: %s", p.err, p.log)
	default:
		return nil
	}
}

// waitReady waits for /readyz.
func (p *cdcProc) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + p.http + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if err := p.alive(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cdc not ready after %s; log: %s", timeout, p.log)
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// procStats are read from /proc while the process runs.
type procStats struct {
	HWMBytes int64   // VmHWM: peak resident set size
	CPUSec   float64 // user + system time
}

func readProcStats(pid int) (procStats, error) {
	var st procStats
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				st.HWMBytes = kb << 10
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	// Fields after the command name (which may contain spaces).
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		f := strings.Fields(s[i+1:])
		if len(f) > 13 {
			ut, _ := strconv.ParseFloat(f[11], 64)
			stt, _ := strconv.ParseFloat(f[12], 64)
			st.CPUSec = (ut + stt) / 100 // USER_HZ is 100 on Linux
		}
	}
	return st, nil
}

func (p *cdcProc) stats() (procStats, error) { return readProcStats(p.cmd.Process.Pid) }

// stop sends SIGTERM and waits for a clean exit.
func (p *cdcProc) stop(timeout time.Duration) error {
	if p.alive() != nil {
		return p.alive()
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("cdc exited with %v; log: %s", p.err, p.log)
		}
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("cdc did not stop within %s; log: %s", timeout, p.log)
	}
}

// profile fetches a CPU profile of d from the running process into path.
func (p *cdcProc) profile(d time.Duration, path string) error {
	return p.fetch(fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds())), path)
}

// counter reads a counter (or gauge) without labels from /metrics.
func (p *cdcProc) counter(name string) (float64, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + p.http + "/metrics")
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", name, err)
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("metric %s not served by cdc (%v)", name, s.Err())
}

// insertWatch follows cdc_batches_flushed_total (one per ClickHouse insert
// of rows) while a run delivers, sampling it every interval.
type insertWatch struct {
	p       *cdcProc
	stopc   chan struct{}
	done    chan struct{}
	samples []insertSample
}

type insertSample struct {
	at time.Time
	n  float64
}

// watchInserts scrapes /metrics every interval until stop.
func (p *cdcProc) watchInserts(interval time.Duration) *insertWatch {
	w := &insertWatch{p: p, stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			if v, err := p.counter("cdc_batches_flushed_total"); err == nil {
				w.samples = append(w.samples, insertSample{time.Now(), v})
			}
			select {
			case <-tick.C:
			case <-w.stopc:
				return
			}
		}
	}()
	return w
}

// stop returns the inserts made so far and the most seen within one
// second (between two samples at most a second apart).
func (w *insertWatch) stop() (n, peak float64, err error) {
	close(w.stopc)
	<-w.done
	n, err = w.p.counter("cdc_batches_flushed_total")
	samples := append(w.samples, insertSample{time.Now(), n})
	for i, s := range samples {
		for j := i; j >= 0 && s.at.Sub(samples[j].at) <= time.Second; j-- {
			// samples[j] was taken before the inserts it had not seen yet:
			// count from the sample before it.
			base := 0.0
			if j > 0 {
				base = samples[j-1].n
			}
			peak = max(peak, s.n-base)
		}
	}
	return n, peak, err
}

// fetch saves what the process serves at uri into path.
func (p *cdcProc) fetch(uri, path string) error {
	client := &http.Client{Timeout: 5 * time.Minute}
	resp, err := client.Get("http://" + p.http + uri)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.ReadFrom(resp.Body)
	return err
}

// ---------------------------------------------------------------- server CPU

// serverCPU reads the CPU time the PostgreSQL cluster (the postmaster, its
// live children and the children it has reaped) and the ClickHouse server
// have used, for the per-row breakdown. Zero when a process is not found.
type serverCPU struct{ pg, ch float64 }

func (b *bench) findServers(ctx context.Context) {
	var dataDir string
	if err := b.chAdmin.Ping(ctx); err != nil {
		return
	}
	conn, err := pgx.Connect(ctx, b.cfg.pgURL)
	if err == nil {
		_ = conn.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir)
		conn.Close(ctx)
	}
	if raw, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid")); err == nil {
		b.pgPID, _ = strconv.Atoi(strings.SplitN(string(raw), "\n", 2)[0])
	}
	// ClickHouse: the clickhouse-server whose config names our port, or the
	// only one.
	_, port, _ := net.SplitHostPort(b.cfg.chAddr)
	entries, _ := os.ReadDir("/proc")
	var found []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(cmd), "clickhouse-server") {
			continue
		}
		for _, arg := range strings.Split(string(cmd), "\x00") {
			if cfg, ok := strings.CutPrefix(arg, "--config-file="); ok {
				if raw, err := os.ReadFile(cfg); err == nil && strings.Contains(string(raw), "<tcp_port>"+port+"</tcp_port>") {
					b.chPID = pid
				}
			}
		}
		found = append(found, pid)
	}
	if b.chPID == 0 && len(found) == 1 {
		b.chPID = found[0]
	}
}

func procTicks(pid int, children bool) float64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return 0
	}
	var t float64
	n := 2
	if children {
		n = 4
	}
	for _, x := range f[11 : 11+n] {
		v, _ := strconv.ParseFloat(x, 64)
		t += v
	}
	return t / 100
}

func (b *bench) serverCPU() serverCPU {
	var c serverCPU
	if b.pgPID > 0 {
		c.pg = procTicks(b.pgPID, true)
		raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", b.pgPID, b.pgPID))
		for _, f := range strings.Fields(string(raw)) {
			if pid, err := strconv.Atoi(f); err == nil {
				c.pg += procTicks(pid, false)
			}
		}
	}
	if b.chPID > 0 {
		c.ch = procTicks(b.chPID, false)
	}
	return c
}

func (c serverCPU) since(start serverCPU) serverCPU {
	return serverCPU{c.pg - start.pg, c.ch - start.ch}
}

// quiesce waits (up to 30 s) until neither server is busy with work left
// over from an earlier phase: a ClickHouse merge or an autovacuum worker.
// Their CPU would otherwise be billed to, and slow, the phase measured next.
func (e *env) quiesce(ctx context.Context) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var merges uint64
		var vacuums int
		errCH := e.ch.QueryRow(ctx, "SELECT count() FROM system.merges").Scan(&merges)
		errPG := e.pg.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'").Scan(&vacuums)
		if errCH != nil || errPG != nil || (merges == 0 && vacuums == 0) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	log.Printf("servers still busy after 30s; measuring anyway")
}

// sweepStale drops the databases (and their slots) that an earlier
// benchmark left behind when it was killed or its server failed: an
// abandoned slot retains WAL until the disk is full. A database belongs to
// a run whose process is gone when the pid at the end of its name is not
// running.
func (b *bench) sweepStale(ctx context.Context) error {
	admin, err := pgx.Connect(ctx, b.cfg.pgURL)
	if err != nil {
		return fmt.Errorf("connect postgres: %w", err)
	}
	defer admin.Close(ctx)
	rows, err := admin.Query(ctx, `SELECT datname FROM pg_database WHERE starts_with(datname, $1)
	        UNION SELECT database FROM pg_replication_slots WHERE starts_with(database, $1)`, envPrefix)
	if err != nil {
		return fmt.Errorf("list benchmark databases: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list benchmark databases: %w", err)
	}
	for _, name := range names {
		i := strings.LastIndexByte(name, '_')
		pid, err := strconv.Atoi(name[i+1:])
		if err != nil || pid == os.Getpid() || processRunning(pid) {
			continue
		}
		log.Printf("dropping %s, left behind by benchmark process %d", name, pid)
		if err := dropPGDatabase(ctx, admin, name); err != nil {
			return err
		}
		if err := b.chAdmin.Exec(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
			return fmt.Errorf("clickhouse drop database %s: %w", name, err)
		}
	}
	return nil
}

func processRunning(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}
