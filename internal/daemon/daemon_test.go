package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// running is a daemon started in-process.
type running struct {
	d       *Daemon
	m       *metrics.Metrics
	stop    context.CancelFunc
	hardEnd context.CancelFunc
	done    chan error
}

// start runs a daemon in-process until the test ends (its log shown with
// -v).
func start(t *testing.T, cfg *config.Config) *running {
	t.Helper()
	return startWriting(t, cfg, io.Discard)
}

// startLogged is start with the daemon's log kept for the test to search.
func startLogged(t *testing.T, cfg *config.Config) (*running, *logBuffer) {
	t.Helper()
	buf := &logBuffer{}
	return startWriting(t, cfg, buf), buf
}

// startWriting starts the daemon with its log written to w. At the end of
// the test it is stopped gracefully, and hard after 30 s.
func startWriting(t *testing.T, cfg *config.Config, w io.Writer) *running {
	t.Helper()
	if testing.Verbose() {
		w = io.MultiWriter(w, os.Stderr)
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := metrics.New()
	r := &running{d: New(cfg, log, m), m: m, done: make(chan error, 1)}
	sd := NewShutdown()
	hard, hardFn := context.WithCancel(context.Background())
	r.stop, r.hardEnd = sd.Begin, hardFn
	go func() { r.done <- r.d.Run(hard, sd) }()
	t.Cleanup(func() {
		r.stop()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			r.hardEnd()
			<-r.done
		}
	})
	return r
}

// logBuffer collects a daemon's log for a test to search; the daemon's
// goroutines write while the test reads.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), sub)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitStreaming waits until the daemon leads and streams.
func (r *running) waitStreaming(t *testing.T) {
	t.Helper()
	waitFor(t, "streaming", 30*time.Second, func() bool { return r.d.streaming.Load() })
}

// addPoisonGuard makes ClickHouse reject every row of event_type 'poison'
// on insert: a server-side rejection the sink cannot predict, so only
// bisecting a batch finds the rows.
func addPoisonGuard(t *testing.T, o *testenv.Outbox) {
	t.Helper()
	q := fmt.Sprintf("ALTER TABLE `%s`.events ADD COLUMN _guard UInt8 MATERIALIZED throwIf(event_type = 'poison')", o.CHDB)
	if err := o.CH.Exec(context.Background(), q); err != nil {
		t.Fatalf("add the poison guard: %v", err)
	}
}

// retryFailed runs one `cdc retry-failed` of o's failed rows with fewer
// than maxAttempts attempts (0: any), without a lease, its log discarded.
func retryFailed(o *testenv.Outbox, maxAttempts int) (RetryResult, error) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return RetryFailed(context.Background(), o.Config(), o.PG, log, maxAttempts)
}

// shutdown stops gracefully and returns Run's result.
func (r *running) shutdown(t *testing.T) error {
	t.Helper()
	r.stop()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("daemon did not stop within 60s of the stop signal")
		return nil
	}
}

// waitFor is testenv.WaitFor, under the name this package's tests use.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, timeout, cond)
}

func TestConcurrentProducersWithRollbacks(t *testing.T) {
	o := testenv.NewOutbox(t)
	cfg := o.Config()
	cfg.Batch.Size = 200
	r := start(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var (
		mu                    sync.Mutex
		committed, rolledBack []int64
		wg                    sync.WaitGroup
	)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := o.Produce(ctx, 40, 5*time.Millisecond)
			if err != nil {
				t.Errorf("producer: %v", err)
			}
			mu.Lock()
			committed = append(committed, p.Committed...)
			rolledBack = append(rolledBack, p.RolledBack...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(rolledBack) == 0 || len(committed) == 0 {
		t.Fatalf("producers made %d committed and %d rolled-back rows; want both", len(committed), len(rolledBack))
	}
	o.WaitCH(uint64(len(committed)), 60*time.Second)
	if err := r.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	o.AssertExactlyOnce(committed, rolledBack)
	if got := testutil.ToFloat64(r.m.RowsFlushed); got != float64(len(committed)) {
		t.Errorf("cdc_rows_flushed_total = %v, want %d", got, len(committed))
	}
}

func TestTransactionLargerThanFiveBatches(t *testing.T) {
	o := testenv.NewOutbox(t)
	cfg := o.Config()
	cfg.Batch.Size = 100
	cfg.Batch.MaxRows = 100 // batches of 100 exactly: no group commit
	r := start(t, cfg)
	r.waitStreaming(t)

	ids := o.MustInsert(650, true)
	o.WaitCH(650, 60*time.Second)
	if err := r.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	o.AssertExactlyOnce(ids, nil)
	if got := testutil.ToFloat64(r.m.BatchesFlushed); got < 7 {
		t.Errorf("cdc_batches_flushed_total = %v, want >= 7 for 650 rows in batches of 100", got)
	}
}

func TestFlushByTimerBelowBatchSize(t *testing.T) {
	o := testenv.NewOutbox(t)
	cfg := o.Config()
	cfg.Batch.Size = 1000
	cfg.Batch.FlushInterval = 300 * time.Millisecond
	r := start(t, cfg)
	r.waitStreaming(t)

	ids := o.MustInsert(5, true)
	// Nothing else arrives: only the timer can flush these five rows.
	o.WaitCH(5, 30*time.Second)
	o.AssertExactlyOnce(ids, nil)
	if got := testutil.ToFloat64(r.m.BatchesFlushed); got != 1 {
		t.Errorf("cdc_batches_flushed_total = %v, want 1", got)
	}
}

func TestStopFlushesAndRestartRepeatsNothing(t *testing.T) {
	o := testenv.NewOutbox(t)
	cfg := o.Config()
	cfg.Batch.Size = 1000
	cfg.Batch.FlushInterval = time.Hour // only the shutdown can flush
	r := start(t, cfg)
	r.waitStreaming(t)

	first := o.MustInsert(300, true)
	waitFor(t, "rows buffered", 30*time.Second, func() bool { return testutil.ToFloat64(r.m.BufferRows) == 300 })
	if n, _ := o.CHCount(); n != 0 {
		t.Fatalf("ClickHouse has %d rows before the flush", n)
	}
	if err := r.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	o.AssertExactlyOnce(first, nil)
	lag, err := o.SlotLag(cfg.Postgres.Slot)
	if err != nil {
		t.Fatal(err)
	}
	var end int64
	if err := o.PG.QueryRow(context.Background(), `SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint FROM pg_replication_slots`).Scan(&end); err != nil {
		t.Fatal(err)
	}
	if end == 0 {
		t.Fatalf("slot confirmed nothing on shutdown (lag %d)", lag)
	}

	// Restart: the slot resumes after the confirmed transaction.
	cfg2 := o.Config()
	r2 := start(t, cfg2)
	second := o.MustInsert(50, true)
	o.WaitCH(350, 60*time.Second)
	if err := r2.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	o.AssertExactlyOnce(append(first, second...), nil)
	if got := testutil.ToFloat64(r2.m.RowsReceived); got != 50 {
		t.Errorf("restarted daemon received %v rows, want only the 50 new ones", got)
	}
}

func TestIdleOutboxOnBusyDatabaseKeepsSlotMoving(t *testing.T) {
	o := testenv.NewOutbox(t)
	cfg := o.Config()
	r := start(t, cfg)
	r.waitStreaming(t)
	ids := o.MustInsert(10, true)
	o.WaitCH(10, 30*time.Second)

	ctx := context.Background()
	if _, err := o.PG.Exec(ctx, `CREATE TABLE busy (id bigserial primary key, payload text)`); err != nil {
		t.Fatal(err)
	}
	var walBefore string
	if err := o.PG.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&walBefore); err != nil {
		t.Fatal(err)
	}
	// About 20 MiB of WAL from a table the publication does not cover:
	// without confirming the keepalive position the slot would hold it all.
	for i := 0; i < 20; i++ {
		if _, err := o.PG.Exec(ctx, `INSERT INTO busy (payload) SELECT repeat('x', 900) FROM generate_series(1, 1000)`); err != nil {
			t.Fatal(err)
		}
	}
	var written int64
	if err := o.PG.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint`, walBefore).Scan(&written); err != nil {
		t.Fatal(err)
	}
	if written < 10<<20 {
		t.Fatalf("test wrote only %d bytes of WAL", written)
	}
	var lag int64
	var err error
	waitFor(t, "slot lag under 1 MiB", 60*time.Second, func() bool {
		lag, err = o.SlotLag(cfg.Postgres.Slot)
		return err == nil && lag < 1<<20
	})
	if err := r.shutdown(t); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	o.AssertExactlyOnce(ids, nil)
}

// The daemon's sessions never JIT-compile: on a big outbox the planner's
// estimate for a marking can pass jit_above_cost, and compiling every
// statement costs more than running it.
func TestPoolSessionsHaveJITOff(t *testing.T) {
	o := testenv.NewOutbox(t)
	pool, err := OpenPool(context.Background(), o.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var jit string
	if err := pool.QueryRow(context.Background(), "SHOW jit").Scan(&jit); err != nil || jit != "off" {
		t.Fatalf("jit = %q (%v), want off", jit, err)
	}
}
