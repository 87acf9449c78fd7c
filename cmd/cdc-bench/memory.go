package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// The memory scenario: rows with big payloads (a 64 KB event_context by
// default) through every path that holds rows — the backfill, the stream,
// one big transaction, a ClickHouse outage with a backlog, and the re-drive
// of failed rows — each checked against the memory bound of
// docs/configuration.md: peak RSS < 2 × batch.max_bytes + 64 MiB, cdc otherwise at its default
// configuration.

// memoryPath is one row of the memory table.
type memoryPath struct {
	Path         string  `json:"path"`
	PayloadBytes int     `json:"payload_bytes"`
	Rows         int     `json:"rows"`
	TxnRows      int     `json:"transaction_rows"`
	Sec          float64 `json:"sec"`
	PeakRSSMiB   float64 `json:"peak_rss_mib"`
	BoundMiB     float64 `json:"bound_mib"`
	Pass         bool    `json:"pass"`
}

type memoryResult struct {
	MaxBytes int64        `json:"batch_max_bytes"`
	Paths    []memoryPath `json:"paths"`
}

// bigRowSQL inserts $2 outbox rows numbered from $1 whose event_context
// holds a string of about $3 bytes.
const bigRowSQL = `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
SELECT 'blob.stored', now() AT TIME ZONE 'utc', 'production',
       jsonb_build_object('n', $1::bigint + g, 'blob', repeat(md5(($1::bigint + g)::text), $3::int / 32)),
       1
FROM generate_series(1, $2::bigint) g`

// loadBig commits rows big rows in transactions of txnRows.
func (e *env) loadBig(ctx context.Context, rows, txnRows, payload int) error {
	for done := 0; done < rows; {
		n := min(txnRows, rows-done)
		if _, err := e.pg.Exec(ctx, bigRowSQL, int64(done), int64(n), payload); err != nil {
			return fmt.Errorf("load big rows: %w", err)
		}
		done += n
	}
	return nil
}

// memoryDefaults are cdc's defaults for what the bound depends on: the
// benchmark's own throughput settings (batch.size 20,000, batch.queue 0)
// would not be the configuration the bound is promised for.
func (b *bench) memoryDefaults() []string {
	return []string{
		"CDC_BATCH_SIZE=1000",
		"CDC_BATCH_QUEUE=2",
		"CDC_BATCH_FLUSH_INTERVAL=1s",
		"CDC_BATCH_MAX_BYTES=" + strconv.FormatInt(b.cfg.memMaxBytes, 10),
	}
}

func (b *bench) memory(ctx context.Context) error {
	r := &memoryResult{MaxBytes: b.cfg.memMaxBytes}
	b.res.Memory = r
	bound := mib(2*b.cfg.memMaxBytes + 64<<20)
	paths := []struct {
		name string
		run  func(context.Context) (memoryPath, error)
	}{
		{"backfill", b.memBackfill},
		{"stream", b.memStream},
		{"one transaction", b.memBigTxn},
		{"clickhouse outage, backlog", b.memOutage},
		{"re-drive (retry-failed)", b.memRedrive},
	}
	for _, p := range paths {
		if len(b.cfg.memPaths) > 0 && !b.cfg.memPaths[strings.Fields(p.name)[0]] {
			continue
		}
		log.Printf("memory: %s", p.name)
		m, err := p.run(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		m.Path, m.PayloadBytes, m.Rows, m.BoundMiB = p.name, b.cfg.memPayload, b.cfg.memRows, bound
		m.Pass = m.PeakRSSMiB > 0 && m.PeakRSSMiB < bound
		log.Printf("memory: %s: peak RSS %.1f MiB (bound %.1f MiB) in %.1fs", p.name, m.PeakRSSMiB, bound, m.Sec)
		r.Paths = append(r.Paths, m)
		b.cleanup()
	}
	return nil
}

// memDeliver starts cdc on e, runs load (nil: the rows are already there)
// once it is ready or at once, waits until every row is delivered and
// returns cdc's peak RSS.
func (b *bench) memDeliver(ctx context.Context, e *env, tag string, waitReady bool, load func() error) (memoryPath, error) {
	var m memoryPath
	p, err := b.startCDC(ctx, e, "memory-"+tag, b.memoryDefaults()...)
	if err != nil {
		return m, err
	}
	if waitReady {
		if err := p.waitReady(ctx, time.Minute); err != nil {
			_ = p.stop(10 * time.Second)
			return m, err
		}
	}
	t0 := time.Now()
	if load != nil {
		if err := load(); err != nil {
			_ = p.stop(10 * time.Second)
			return m, err
		}
	}
	stopHeap := b.heapProfiles(p, "memory-"+tag)
	_, err = e.waitDelivered(ctx, b.cfg.memRows, 20*time.Minute, p.alive)
	stopHeap()
	if err != nil {
		_ = p.stop(30 * time.Second)
		return m, err
	}
	m.Sec = round(time.Since(t0).Seconds(), 1)
	st, err := p.stats()
	if err != nil {
		return m, err
	}
	m.PeakRSSMiB = mib(st.HWMBytes)
	if err := p.stop(time.Minute); err != nil {
		return m, err
	}
	return m, e.verify(ctx, b.cfg.memRows)
}

// memBackfill: the rows predate the slot, so cdc's first start backfills them.
func (b *bench) memBackfill(ctx context.Context) (memoryPath, error) {
	e, err := b.newEnv(ctx, "mem_backfill")
	if err != nil {
		return memoryPath{}, err
	}
	if err := e.loadBig(ctx, b.cfg.memRows, b.cfg.memTxnRows, b.cfg.memPayload); err != nil {
		return memoryPath{}, err
	}
	m, err := b.memDeliver(ctx, e, "backfill", false, nil)
	m.TxnRows = b.cfg.memTxnRows
	return m, err
}

// memStream: cdc streams while the rows are committed in small transactions.
func (b *bench) memStream(ctx context.Context) (memoryPath, error) {
	e, err := b.newEnv(ctx, "mem_stream")
	if err != nil {
		return memoryPath{}, err
	}
	m, err := b.memDeliver(ctx, e, "stream", true, func() error {
		return e.loadBig(ctx, b.cfg.memRows, b.cfg.memTxnRows, b.cfg.memPayload)
	})
	m.TxnRows = b.cfg.memTxnRows
	return m, err
}

// memBigTxn: cdc streams one transaction holding every row.
func (b *bench) memBigTxn(ctx context.Context) (memoryPath, error) {
	e, err := b.newEnv(ctx, "mem_bigtxn")
	if err != nil {
		return memoryPath{}, err
	}
	m, err := b.memDeliver(ctx, e, "bigtxn", true, func() error {
		return e.loadBig(ctx, b.cfg.memRows, b.cfg.memRows, b.cfg.memPayload)
	})
	m.TxnRows = b.cfg.memRows
	return m, err
}

// memOutage: a private ClickHouse (the shared one must keep running for
// everyone else) is stopped while cdc streams and the rows are committed;
// cdc retries with every byte of its budget held for a while
// (-memory-outage), then ClickHouse starts again and the backlog drains.
func (b *bench) memOutage(ctx context.Context) (memoryPath, error) {
	ch, err := b.privateClickHouse(ctx, "mem_outage")
	if err != nil {
		return memoryPath{}, err
	}
	e, err := b.newEnvOn(ctx, "mem_outage", ch.addr, ch.admin)
	if err != nil {
		return memoryPath{}, err
	}
	m, err := b.memDeliver(ctx, e, "outage", true, func() error {
		if err := ch.script("ch-stop"); err != nil {
			return err
		}
		if err := e.loadBig(ctx, b.cfg.memRows, b.cfg.memTxnRows, b.cfg.memPayload); err != nil {
			return err
		}
		log.Printf("memory: rows committed with ClickHouse down; starting it in %s", b.cfg.memOutage)
		time.Sleep(b.cfg.memOutage)
		return ch.script("ch-start")
	})
	m.TxnRows = b.cfg.memTxnRows
	return m, err
}

// memRedrive: the rows are streamed, then made failed rows that ClickHouse
// does not have (the events truncated, the outbox rows set failed; an
// UPDATE is not published), and `cdc retry-failed` re-drives them all. Its
// peak RSS is the child's ru_maxrss.
func (b *bench) memRedrive(ctx context.Context) (memoryPath, error) {
	var m memoryPath
	e, err := b.newEnv(ctx, "mem_redrive")
	if err != nil {
		return m, err
	}
	p, err := b.startCDC(ctx, e, "memory-redrive-stream", b.memoryDefaults()...)
	if err != nil {
		return m, err
	}
	if err := p.waitReady(ctx, time.Minute); err != nil {
		_ = p.stop(10 * time.Second)
		return m, err
	}
	if err := e.loadBig(ctx, b.cfg.memRows, b.cfg.memTxnRows, b.cfg.memPayload); err != nil {
		_ = p.stop(10 * time.Second)
		return m, err
	}
	if _, err := e.waitDelivered(ctx, b.cfg.memRows, 20*time.Minute, p.alive); err != nil {
		_ = p.stop(30 * time.Second)
		return m, err
	}
	if err := p.stop(time.Minute); err != nil {
		return m, err
	}
	if err := e.ch.Exec(ctx, "TRUNCATE TABLE events"); err != nil {
		return m, fmt.Errorf("truncate events: %w", err)
	}
	if _, err := e.pg.Exec(ctx, `UPDATE event_outbox SET status = 'failed', attempts = 1, last_error = 'cdc-bench'`); err != nil {
		return m, fmt.Errorf("mark rows failed: %w", err)
	}
	logPath := filepath.Join(b.cfg.workDir, e.name+"-memory-redrive.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return m, err
	}
	defer logf.Close()
	cmd := b.cdcCommand(ctx, e, b.memoryDefaults(), "retry-failed")
	cmd.Stdout, cmd.Stderr = logf, logf
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return m, fmt.Errorf("cdc retry-failed: %v; log: %s", err, logPath)
	}
	m.Sec, m.TxnRows = round(time.Since(t0).Seconds(), 1), b.cfg.memTxnRows
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.PeakRSSMiB = mib(ru.Maxrss << 10) // kilobytes on Linux
	}
	return m, e.verify(ctx, b.cfg.memRows)
}

// privateCH is a ClickHouse server of the benchmark's own, started with
// scripts/testenv.sh in a directory of its own on free ports.
type privateCH struct {
	addr   string
	admin  driver.Conn
	env    []string
	script func(args ...string) error
}

func (b *bench) privateClickHouse(ctx context.Context, name string) (*privateCH, error) {
	dir, err := os.MkdirTemp("/tmp", "cdc-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	// The server runs as its own user, which must reach the directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	script, err := filepath.Abs("scripts/testenv.sh")
	if err != nil {
		return nil, err
	}
	ch := &privateCH{addr: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	ch.env = append(os.Environ(),
		"CDC_TESTENV_DIR="+dir,
		fmt.Sprintf("CDC_TESTENV_CHPORT=%d", ports[0]),
		fmt.Sprintf("CDC_TESTENV_CHHTTPPORT=%d", ports[1]),
		fmt.Sprintf("CDC_TESTENV_CHINTERPORT=%d", ports[2]),
	)
	ch.script = func(args ...string) error {
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(sctx, script, args...)
		cmd.Env = ch.env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %w\n%s", script, strings.Join(args, " "), err, out)
		}
		return nil
	}
	b.cleanups = append(b.cleanups, func(context.Context) error {
		if ch.admin != nil {
			ch.admin.Close()
		}
		err := ch.script("ch-stop")
		if err == nil {
			err = os.RemoveAll(dir)
		}
		return err
	})
	if err := ch.script("ch-start"); err != nil {
		return nil, err
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch.addr}, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	ch.admin = conn
	return ch, conn.Ping(ctx)
}

// memoryTable renders the memory results (empty when the scenario did not
// run); markdown selects a Markdown table.
func (b *bench) memoryTable(markdown bool) string {
	r := b.res.Memory
	if r == nil || len(r.Paths) == 0 {
		return ""
	}
	var sb strings.Builder
	head := fmt.Sprintf("Memory, rows with a %s-byte event_context, batch.max_bytes %s (bound 2 × max_bytes + 64 MiB), other settings at their defaults",
		num(float64(b.cfg.memPayload)), num(float64(r.MaxBytes)))
	result := func(ok bool) string {
		if ok {
			return "PASS"
		}
		return "FAIL"
	}
	if markdown {
		fmt.Fprintf(&sb, "%s:\n\n| path | payload | rows | rows per transaction | peak RSS | bound | result |\n|---|---|---|---|---|---|---|\n", head)
		for _, p := range r.Paths {
			fmt.Fprintf(&sb, "| %s | %s B | %s | %s | %.1f MiB | %.0f MiB | %s |\n", p.Path, num(float64(p.PayloadBytes)), num(float64(p.Rows)), num(float64(p.TxnRows)), p.PeakRSSMiB, p.BoundMiB, result(p.Pass))
		}
		return sb.String()
	}
	fmt.Fprintf(&sb, "%s:\n", head)
	w := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "path\tpayload\trows\trows/txn\tpeak RSS\tbound\tresult")
	for _, p := range r.Paths {
		fmt.Fprintf(w, "%s\t%s B\t%s\t%s\t%.1f MiB\t%.0f MiB\t%s\n", p.Path, num(float64(p.PayloadBytes)), num(float64(p.Rows)), num(float64(p.TxnRows)), p.PeakRSSMiB, p.BoundMiB, result(p.Pass))
	}
	w.Flush()
	return sb.String()
}
