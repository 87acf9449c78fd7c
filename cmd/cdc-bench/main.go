// Command cdc-bench measures the real cdc binary against the ceiling of one
// replication slot (pg_recvlogical) and the polling design it replaces, on
// the local test servers (scripts/testenv.sh), and checks the performance
// targets listed in the README's Benchmark section. Run it with `make bench`; see README.md in this
// folder for the method.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

type config struct {
	pgURL, chAddr    string
	cdcBin           string
	recvlogical      string
	rows, txnRows    int
	backlogRows      int
	bigTxnRows       int
	pollBatch        int
	pairs            int
	batchSize        int
	maxRows          int
	latencyBatchSize int
	queue            int
	maxProcs         int
	flushInterval    time.Duration
	latencyRates     []int
	latencyTxnRows   int
	latencyDuration  time.Duration
	poll             time.Duration
	scenarios        map[string]bool
	jsonPath, mdPath string
	plotPath         string
	workDir          string
	keep             bool
	logLevel         string
	profileSeconds   int
	heapProfiles     bool
	cdcEnv           []string
	memRows          int
	memTxnRows       int
	memPayload       int
	memMaxBytes      int64
	memOutage        time.Duration
	memPaths         map[string]bool
	binaryRuns       int
}

type bench struct {
	cfg          config
	pgPID, chPID int
	chAdmin      driver.Conn
	cleanups     []func(context.Context) error
	res          result
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	log.SetFlags(log.Ltime)
	log.SetPrefix("cdc-bench: ")
	var cfg config
	var scenarios string
	var cdcEnv multiFlag
	flag.StringVar(&cfg.pgURL, "pg", envOr("CDC_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:55432/cdc?sslmode=disable"), "PostgreSQL URL of the test server (a superuser; databases are created next to its database)")
	flag.StringVar(&cfg.chAddr, "clickhouse", envOr("CDC_TEST_CLICKHOUSE_ADDR", "127.0.0.1:59000"), "ClickHouse native address of the test server")
	flag.StringVar(&cfg.cdcBin, "cdc", "", "cdc binary to measure (default: go build ./cmd/cdc into the work dir)")
	flag.StringVar(&cfg.recvlogical, "recvlogical", "", "pg_recvlogical binary (default: pg_config --bindir, $CDC_TEST_PGBIN, /usr/lib/postgresql/15/bin, PATH)")
	flag.IntVar(&cfg.rows, "rows", 200_000, "rows for the throughput comparison")
	flag.IntVar(&cfg.pairs, "pairs", 5, "pg_recvlogical/cdc pairs of the throughput comparison (the median ratio is reported)")
	flag.IntVar(&cfg.txnRows, "txn-rows", 1000, "rows per transaction when loading")
	flag.IntVar(&cfg.backlogRows, "backlog-rows", 1_000_000, "rows of the backlog committed while cdc is stopped (peak RSS)")
	flag.IntVar(&cfg.bigTxnRows, "bigtxn-rows", 1_000_000, "rows of the single big transaction (peak RSS)")
	flag.IntVar(&cfg.pollBatch, "poll-batch", 1000, "batch size of the polling baseline (the seed's 1000)")
	// -1: not set, cdc runs at its default (the benchmark's configuration
	// is cdc's default except batch.flush_interval).
	flag.IntVar(&cfg.batchSize, "batch-size", -1, "cdc batch.size of the throughput, backlog and big-transaction runs (-1: cdc's default)")
	flag.IntVar(&cfg.maxRows, "max-rows", -1, "cdc batch.max_rows (-1: cdc's default)")
	flag.IntVar(&cfg.queue, "queue", -1, "cdc batch.queue (-1: cdc's default)")
	flag.IntVar(&cfg.maxProcs, "max-procs", -1, "cdc runtime.max_procs, threads running Go code (-1: cdc's default)")
	flag.IntVar(&cfg.latencyBatchSize, "latency-batch-size", -1, "cdc batch.size of the latency runs (-1: as -batch-size)")
	flag.DurationVar(&cfg.flushInterval, "flush-interval", 500*time.Millisecond, "cdc batch.flush_interval")
	var rates string
	flag.StringVar(&rates, "latency-rates", "1000,5000,20000", "offered loads of the latency runs, rows/s, comma-separated")
	flag.IntVar(&cfg.latencyTxnRows, "latency-txn-rows", 50, "rows per transaction of the latency run")
	flag.DurationVar(&cfg.latencyDuration, "latency-duration", 20*time.Second, "length of the latency run")
	flag.DurationVar(&cfg.poll, "poll", 10*time.Millisecond, "how often the benchmark polls ClickHouse")
	flag.StringVar(&scenarios, "scenarios", "throughput,polling,latency,backlog,bigtxn,memory,binary", "scenarios to run")
	// Every run keeps its own files (issue 22): named by the start time,
	// never overwritten.
	var resultsDir string
	flag.StringVar(&resultsDir, "results", "cmd/cdc-bench/results", "directory of the run's files when -json, -md or -plot is auto")
	flag.StringVar(&cfg.jsonPath, "json", "auto", "write the results as JSON here (auto: RESULTS/run-<UTC start>.json)")
	flag.StringVar(&cfg.mdPath, "md", "auto", "write the table as Markdown here (auto: RESULTS/run-<UTC start>.md; empty: do not)")
	flag.StringVar(&cfg.plotPath, "plot", "auto", "write the latency plot (PNG) here (auto: RESULTS/run-<UTC start>-latency.png; empty: do not)")
	flag.StringVar(&cfg.workDir, "work", "", "directory for the cdc binary, logs and profiles (default: a new temporary directory)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the benchmark databases")
	flag.StringVar(&cfg.logLevel, "log-level", "info", "cdc's log.level (debug logs every insert and marking into the work dir's logs)")
	flag.IntVar(&cfg.profileSeconds, "profile-seconds", 0, "when > 0, save a CPU profile of cdc for this many seconds of the backlog run into the work dir")
	flag.BoolVar(&cfg.heapProfiles, "heap-profiles", false, "save a heap profile of cdc every second of the backlog and big-transaction runs into the work dir")
	flag.Var(&cdcEnv, "cdc-env", "extra CDC_KEY=value for every cdc run (repeatable)")
	flag.IntVar(&cfg.memRows, "memory-rows", 3000, "rows of each path of the memory scenario")
	flag.IntVar(&cfg.memTxnRows, "memory-txn-rows", 10, "rows per transaction of the memory scenario's backfill, stream, outage and re-drive loads")
	flag.IntVar(&cfg.memPayload, "memory-payload", 64<<10, "bytes of each row's event_context in the memory scenario")
	flag.Int64Var(&cfg.memMaxBytes, "memory-max-bytes", 16<<20, "cdc batch.max_bytes of the memory scenario (the default); the bound is 2 × this + 64 MiB")
	flag.DurationVar(&cfg.memOutage, "memory-outage", 10*time.Second, "how long ClickHouse stays down after the memory scenario's outage rows are committed")
	flag.IntVar(&cfg.binaryRuns, "binary-runs", 3, "pg_recvlogical runs per format (text, binary) of the binary scenario; the median is reported")
	var memPaths string
	flag.StringVar(&memPaths, "memory-paths", "", "paths of the memory scenario to run, by first word: backfill,stream,one,clickhouse,re-drive (default: all)")
	flag.Parse()
	for _, r := range strings.Split(rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || n <= 0 {
			log.Fatalf("-latency-rates: %q is not a positive number of rows/s", r)
		}
		cfg.latencyRates = append(cfg.latencyRates, n)
	}
	stamp := "run-" + time.Now().UTC().Format("20060102T150405Z")
	for _, p := range []struct {
		path *string
		ext  string
	}{{&cfg.jsonPath, ".json"}, {&cfg.mdPath, ".md"}, {&cfg.plotPath, "-latency.png"}} {
		if *p.path == "auto" {
			*p.path = filepath.Join(resultsDir, stamp+p.ext)
		}
		if _, err := os.Stat(*p.path); *p.path != "" && err == nil {
			log.Fatalf("%s exists: every run keeps its own results, pick another name", *p.path)
		}
	}
	cfg.memPaths = map[string]bool{}
	for _, p := range strings.Split(memPaths, ",") {
		if p = strings.TrimSpace(p); p != "" {
			cfg.memPaths[p] = true
		}
	}
	cfg.cdcEnv = cdcEnv
	cfg.scenarios = map[string]bool{}
	for _, s := range strings.Split(scenarios, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.scenarios[s] = true
		}
	}
	if err := run(cfg); err != nil {
		log.Fatal(err)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run(cfg config) error {
	ctx := context.Background()
	var err error
	if cfg.workDir == "" {
		if cfg.workDir, err = os.MkdirTemp("", "cdc-bench-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(cfg.workDir, 0o755); err != nil {
		return err
	}
	log.Printf("work dir %s", cfg.workDir)
	if cfg.cdcBin == "" {
		cfg.cdcBin = filepath.Join(cfg.workDir, "cdc")
		log.Printf("building cdc")
		if out, err := exec.Command("go", "build", "-o", cfg.cdcBin, "./cmd/cdc").CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/cdc: %v\n%s", err, out)
		}
	}
	if cfg.recvlogical, err = findRecvlogical(cfg.recvlogical); err != nil && cfg.scenarios["throughput"] {
		return err
	}
	b := &bench{cfg: cfg}
	b.chAdmin, err = clickhouse.Open(&clickhouse.Options{Addr: []string{cfg.chAddr}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer b.chAdmin.Close()
	defer b.cleanup()
	if err := b.sweepStale(ctx); err != nil {
		return err
	}
	if err := b.describeMachine(ctx); err != nil {
		return err
	}
	b.findServers(ctx)
	b.res.Started = time.Now().UTC().Format(time.RFC3339)

	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"throughput", b.throughput},
		{"polling", b.polling},
		{"latency", b.latency},
		{"backlog", b.backlog},
		{"bigtxn", b.bigTxn},
		{"memory", b.memory},
		{"binary", b.binary},
	}
	for _, s := range steps {
		if !cfg.scenarios[s.name] {
			continue
		}
		log.Printf("== %s", s.name)
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		// Drop the scenario's databases and slots before the next one.
		b.cleanup()
	}
	b.evaluate()
	table := b.table()
	fmt.Println()
	fmt.Print(table)
	if cfg.jsonPath != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.jsonPath), 0o755); err != nil {
			return err
		}
		raw, _ := json.MarshalIndent(b.res, "", "  ")
		if err := os.WriteFile(cfg.jsonPath, append(raw, '\n'), 0o644); err != nil {
			return err
		}
		log.Printf("wrote %s", cfg.jsonPath)
	}
	if cfg.mdPath != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.mdPath), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(cfg.mdPath, []byte(b.markdown()), 0o644); err != nil {
			return err
		}
		log.Printf("wrote %s", cfg.mdPath)
	}
	if !b.res.AllPass {
		return fmt.Errorf("not every target met")
	}
	return nil
}

func (b *bench) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		if err := b.cleanups[i](context.Background()); err != nil {
			log.Printf("cleanup: %v", err)
		}
	}
	b.cleanups = nil
}

// ---------------------------------------------------------------- scenarios

// throughput: pg_recvlogical and cdc read the same WAL (both slots exist
// before the rows are loaded), one after the other.
// throughput measures -pairs pairs (pg_recvlogical, then cdc), each on
// fresh rows in fresh databases, and reports the pair with the median ratio:
// on a shared 2-core VM one pair of one-second runs swings by a third, and
// the median of several is the honest figure. Every pair is in the JSON.
func (b *bench) throughput(ctx context.Context) error {
	if b.cfg.batchSize > 0 && b.cfg.rows%b.cfg.batchSize != 0 {
		log.Printf("warning: -rows %d is not a multiple of -batch-size %d: cdc's last batch waits for the flush interval (%s), which the rate then includes",
			b.cfg.rows, b.cfg.batchSize, b.cfg.flushInterval)
	}
	var runs []throughputResult
	for i := range max(b.cfg.pairs, 1) {
		r, err := b.throughputPair(ctx, i)
		if err != nil {
			return err
		}
		runs = append(runs, r)
		log.Printf("pair %d: cdc / pg_recvlogical %.2f×", i+1, r.CDCRate/r.RecvRate)
	}
	b.res.ThroughputRuns = runs
	sorted := slices.Clone(runs)
	slices.SortFunc(sorted, func(x, y throughputResult) int {
		return cmp.Compare(x.CDCRate/x.RecvRate, y.CDCRate/y.RecvRate)
	})
	b.res.Throughput = sorted[len(sorted)/2]
	return nil
}

func (b *bench) throughputPair(ctx context.Context, pair int) (throughputResult, error) {
	var r throughputResult
	e, err := b.newEnv(ctx, fmt.Sprintf("tp%d", pair))
	if err != nil {
		return r, err
	}
	if err := e.createRecvSlot(ctx); err != nil {
		return r, err
	}
	// Create cdc's slot on the empty outbox, so the rows go through the
	// stream (rows older than the slot would take the backfill path).
	if err := b.primeCDC(ctx, e); err != nil {
		return r, err
	}
	r.Rows = b.cfg.rows
	log.Printf("loading %d rows in transactions of %d", b.cfg.rows, b.cfg.txnRows)
	t0 := time.Now()
	if err := e.load(ctx, b.cfg.rows, b.cfg.txnRows); err != nil {
		return r, err
	}
	marker := fmt.Sprintf("cdc-bench-end-%d-%d", os.Getpid(), time.Now().UnixNano())
	if err := e.emitMarker(ctx, marker); err != nil {
		return r, err
	}
	r.LoadSec = round(time.Since(t0).Seconds(), 2)
	if r.RowMessageBytes, r.RowTupleBytes, err = e.rowBytes(ctx); err != nil {
		return r, err
	}
	r.RowMessageBytes, r.RowTupleBytes = round(r.RowMessageBytes, 0), round(r.RowTupleBytes, 0)
	if _, err := e.pg.Exec(ctx, "CHECKPOINT"); err != nil {
		return r, err
	}

	e.quiesce(ctx)
	log.Printf("pg_recvlogical")
	cpu0 := b.serverCPU()
	rr, err := b.runRecvlogical(ctx, e, e.recvSlot(), marker, 10*time.Minute)
	if err != nil {
		return r, err
	}
	d, n := rr.took, rr.bytes
	r.RecvCPU = b.serverCPU().since(cpu0).perRow(b.cfg.rows)
	r.RecvSec = round(d.Seconds(), 3)
	r.RecvRate = round(float64(b.cfg.rows)/d.Seconds(), 0)
	r.RecvBytes = n
	log.Printf("pg_recvlogical: %s, %.0f rows/s (postgres %.2f µs/row)", d.Round(time.Millisecond), r.RecvRate, r.RecvCPU.PG)

	e.quiesce(ctx)
	log.Printf("cdc")
	cpu0 = b.serverCPU()
	p, err := b.startCDC(ctx, e, "throughput")
	if err != nil {
		return r, err
	}
	inserts := p.watchInserts(50 * time.Millisecond)
	done, err := e.waitDelivered(ctx, b.cfg.rows, 10*time.Minute, p.alive)
	nIns, peak, ierr := inserts.stop()
	if err == nil {
		err = ierr
	}
	if err != nil {
		_ = p.stop(30 * time.Second)
		return r, err
	}
	r.Inserts = int(nIns)
	// The most inserts seen within one second of the backlog (the target),
	// and the mean over it, from cdc's start to the last row marked.
	r.InsertsPeak = int(peak)
	r.InsertsPerSec = round(nIns/done.Sub(p.started).Seconds(), 1)
	st, err := p.stats()
	if err != nil {
		return r, err
	}
	r.CDCServerCPU = b.serverCPU().since(cpu0).perRow(b.cfg.rows)
	cd := done.Sub(p.started)
	r.CDCSec = round(cd.Seconds(), 3)
	r.CDCRate = round(float64(b.cfg.rows)/cd.Seconds(), 0)
	r.CDCPeakRSSMiB = mib(st.HWMBytes)
	r.CDCCPUSec = round(st.CPUSec, 2)
	log.Printf("cdc: %s, %.0f rows/s, %d inserts (%.1f/s, at most %d within a second), peak RSS %.1f MiB, cpu %.2fs (%.2f µs/row; postgres %.2f, clickhouse %.2f µs/row)",
		cd.Round(time.Millisecond), r.CDCRate, r.Inserts, r.InsertsPerSec, r.InsertsPeak, r.CDCPeakRSSMiB, st.CPUSec, st.CPUSec*1e6/float64(b.cfg.rows), r.CDCServerCPU.PG, r.CDCServerCPU.CH)
	if err := p.stop(time.Minute); err != nil {
		return r, err
	}
	return r, e.verify(ctx, b.cfg.rows)
}

// heapProfiles saves a heap profile of p every second (with -heap-profiles)
// until the returned function is called.
func (b *bench) heapProfiles(p *cdcProc, tag string) func() {
	if !b.cfg.heapProfiles {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		for i := 1; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(time.Second):
			}
			_ = p.fetch("/debug/pprof/heap", filepath.Join(b.cfg.workDir, fmt.Sprintf("cdc-%s.heap.%02d.pprof", tag, i)))
		}
	}()
	return func() { close(done) }
}

// primeCDC runs cdc once on an empty outbox: it creates its slot (and an
// empty backfill), then stops.
func (b *bench) primeCDC(ctx context.Context, e *env) error {
	p, err := b.startCDC(ctx, e, "prime")
	if err != nil {
		return err
	}
	if err := p.waitReady(ctx, time.Minute); err != nil {
		_ = p.stop(10 * time.Second)
		return err
	}
	return p.stop(time.Minute)
}

// polling runs the baseline on the seed's own table: on a copy as loaded and on a freshly vacuumed copy, the better
// rate being the baseline. A third run adds an index that serves the
// poller's query, which the seed does not have: a tuned polling design,
// reported for comparison and not used as the baseline.
func (b *bench) polling(ctx context.Context) error {
	r := &b.res.Polling
	r.Rows = b.cfg.rows
	r.Batch = b.cfg.pollBatch
	for _, v := range []pollVariant{pollAsLoaded, pollVacuumed, pollIndexed} {
		run, err := b.pollingRun(ctx, v)
		if err != nil {
			return err
		}
		switch v {
		case pollAsLoaded:
			r.AsLoaded = run
		case pollVacuumed:
			r.Vacuumed = run
		case pollIndexed:
			r.Indexed = run
		}
		if v != pollIndexed && run.Rate > r.Rate {
			r.Rate = run.Rate
		}
	}
	return nil
}

type pollVariant int

const (
	pollAsLoaded pollVariant = iota
	pollVacuumed
	pollIndexed
)

func (v pollVariant) String() string {
	return [...]string{"seed table as loaded", "seed table freshly vacuumed", "seed table + index on unprocessed rows, vacuumed"}[v]
}

// seedTable turns the migrated outbox back into the seed's table by
// removing what cdc migrate adds: its own columns, the index on failed rows and the fillfactor. What
// is left is a primary key and nothing else.
const seedTable = `DROP INDEX event_outbox_failed_idx;
ALTER TABLE event_outbox RESET (fillfactor), DROP COLUMN last_error, DROP COLUMN attempts`

func (b *bench) pollingRun(ctx context.Context, v pollVariant) (pollingRun, error) {
	var r pollingRun
	e, err := b.newEnv(ctx, fmt.Sprintf("poll%d", v))
	if err != nil {
		return r, err
	}
	if _, err := e.pg.Exec(ctx, seedTable); err != nil {
		return r, fmt.Errorf("make the seed's table: %w", err)
	}
	var indexes int
	if err := e.pg.QueryRow(ctx, `SELECT count(*) FROM pg_indexes WHERE tablename = 'event_outbox'`).Scan(&indexes); err != nil || indexes != 1 {
		return r, fmt.Errorf("the seed's table has %d indexes (%v), want only its primary key", indexes, err)
	}
	if v == pollIndexed {
		if _, err := e.pg.Exec(ctx, `CREATE INDEX ON event_outbox (id) WHERE status IN ('pending', 'failed')`); err != nil {
			return r, err
		}
	}
	log.Printf("loading %d rows in transactions of %d", b.cfg.rows, b.cfg.txnRows)
	if err := e.load(ctx, b.cfg.rows, b.cfg.txnRows); err != nil {
		return r, err
	}
	if v != pollAsLoaded {
		if _, err := e.pg.Exec(ctx, "VACUUM ANALYZE event_outbox"); err != nil {
			return r, err
		}
	}
	if _, err := e.pg.Exec(ctx, "CHECKPOINT"); err != nil {
		return r, err
	}
	cpu0 := b.serverCPU()
	n, d, err := e.runPolling(ctx, b.cfg.pollBatch)
	if err != nil {
		return r, err
	}
	r.ServerCPU = b.serverCPU().since(cpu0).perRow(n)
	if n != b.cfg.rows {
		return r, fmt.Errorf("polling moved %d rows, want %d", n, b.cfg.rows)
	}
	r.Sec = round(d.Seconds(), 3)
	r.Rate = round(float64(n)/d.Seconds(), 0)
	log.Printf("polling (%s): %s, %.0f rows/s (postgres %.2f, clickhouse %.2f µs/row)", v, d.Round(time.Millisecond), r.Rate, r.ServerCPU.PG, r.ServerCPU.CH)
	return r, e.verify(ctx, b.cfg.rows)
}

// latency offers each of -latency-rates in turn to one cdc process, with
// the same settings as the other runs (flush_interval 500ms).
func (b *bench) latency(ctx context.Context) error {
	e, err := b.newEnv(ctx, "lat")
	if err != nil {
		return err
	}
	var extra []string
	if b.cfg.latencyBatchSize >= 0 {
		extra = append(extra, "CDC_BATCH_SIZE="+strconv.Itoa(b.cfg.latencyBatchSize))
	}
	p, err := b.startCDC(ctx, e, "latency", extra...)
	if err != nil {
		return err
	}
	defer p.stop(time.Minute)
	if err := p.waitReady(ctx, time.Minute); err != nil {
		return err
	}
	rows := 0
	for _, rate := range b.cfg.latencyRates {
		log.Printf("offering %d rows/s in transactions of %d for %s", rate, b.cfg.latencyTxnRows, b.cfg.latencyDuration)
		lr, err := e.runLatency(ctx, rate, b.cfg.latencyTxnRows, b.cfg.latencyDuration)
		if err != nil {
			return err
		}
		st, err := p.stats()
		if err != nil {
			return err
		}
		rows += lr.Rows
		b.res.Latency = append(b.res.Latency, latencyRun{latencyResult: lr, FlushInterval: b.cfg.flushInterval.String(),
			BatchSize: b.cfg.latencyBatchSize, PeakRSSMiB: mib(st.HWMBytes)})
		log.Printf("latency: p50 %.1f ms, p99 %.1f ms, max %.1f ms at %.0f rows/s", lr.P50ms, lr.P99ms, lr.Maxms, lr.OfferedRate)
	}
	if err := p.stop(time.Minute); err != nil {
		return err
	}
	if err := e.verify(ctx, rows); err != nil {
		return err
	}
	return b.plotLatency()
}

// backlog: rows committed while cdc is stopped, with its slot in place,
// then delivered in one go (the streaming backlog).
func (b *bench) backlog(ctx context.Context) error {
	e, err := b.newEnv(ctx, "backlog")
	if err != nil {
		return err
	}
	if err := b.primeCDC(ctx, e); err != nil {
		return err
	}
	log.Printf("loading %d rows in transactions of %d while cdc is stopped", b.cfg.backlogRows, b.cfg.txnRows)
	if err := e.load(ctx, b.cfg.backlogRows, b.cfg.txnRows); err != nil {
		return err
	}
	if _, err := e.pg.Exec(ctx, "VACUUM ANALYZE event_outbox"); err != nil {
		return err
	}
	p, err := b.startCDC(ctx, e, "backlog")
	if err != nil {
		return err
	}
	profiled := make(chan struct{})
	if b.cfg.profileSeconds > 0 {
		go func() {
			defer close(profiled)
			path := filepath.Join(b.cfg.workDir, "cdc-backlog.cpu.pprof")
			err := p.waitReady(ctx, time.Minute)
			if err == nil {
				err = p.profile(time.Duration(b.cfg.profileSeconds)*time.Second, path)
			}
			if err != nil {
				log.Printf("profile: %v", err)
			} else {
				log.Printf("wrote %s", path)
			}
		}()
	} else {
		close(profiled)
	}
	stopHeap := b.heapProfiles(p, "backlog")
	done, err := e.waitDelivered(ctx, b.cfg.backlogRows, 30*time.Minute, p.alive)
	stopHeap()
	<-profiled
	if err != nil {
		_ = p.stop(30 * time.Second)
		return err
	}
	st, err := p.stats()
	if err != nil {
		return err
	}
	d := done.Sub(p.started)
	r := &b.res.Backlog
	r.Rows = b.cfg.backlogRows
	r.Sec = round(d.Seconds(), 2)
	r.Rate = round(float64(r.Rows)/d.Seconds(), 0)
	r.PeakRSSMiB = mib(st.HWMBytes)
	r.CPUSec = round(st.CPUSec, 2)
	log.Printf("backlog: %s, %.0f rows/s, peak RSS %.1f MiB", d.Round(time.Millisecond), r.Rate, r.PeakRSSMiB)
	if err := p.stop(time.Minute); err != nil {
		return err
	}
	return e.verify(ctx, r.Rows)
}

// bigTxn: one transaction of bigtxn-rows rows committed while cdc streams.
func (b *bench) bigTxn(ctx context.Context) error {
	e, err := b.newEnv(ctx, "bigtxn")
	if err != nil {
		return err
	}
	p, err := b.startCDC(ctx, e, "bigtxn")
	if err != nil {
		return err
	}
	if err := p.waitReady(ctx, time.Minute); err != nil {
		_ = p.stop(10 * time.Second)
		return err
	}
	log.Printf("committing one transaction of %d rows", b.cfg.bigTxnRows)
	t0 := time.Now()
	if err := e.load(ctx, b.cfg.bigTxnRows, b.cfg.bigTxnRows); err != nil {
		_ = p.stop(10 * time.Second)
		return err
	}
	committed := time.Now()
	stopHeap := b.heapProfiles(p, "bigtxn")
	done, err := e.waitDelivered(ctx, b.cfg.bigTxnRows, 30*time.Minute, p.alive)
	stopHeap()
	if err != nil {
		_ = p.stop(30 * time.Second)
		return err
	}
	st, err := p.stats()
	if err != nil {
		return err
	}
	r := &b.res.BigTxn
	r.Rows = b.cfg.bigTxnRows
	r.CommitSec = round(committed.Sub(t0).Seconds(), 2)
	r.Sec = round(done.Sub(committed).Seconds(), 2)
	r.Rate = round(float64(r.Rows)/done.Sub(committed).Seconds(), 0)
	r.PeakRSSMiB = mib(st.HWMBytes)
	r.CPUSec = round(st.CPUSec, 2)
	log.Printf("bigtxn: delivered %s after commit, peak RSS %.1f MiB", done.Sub(committed).Round(time.Millisecond), r.PeakRSSMiB)
	if err := p.stop(time.Minute); err != nil {
		return err
	}
	return e.verify(ctx, r.Rows)
}
