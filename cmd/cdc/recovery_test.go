package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// legacyRows fills the outbox as the polling design left it and returns the
// ids that must be delivered (pending and failed) and those that must not
// (processed).
func legacyRows(t *testing.T, o *testenv.Outbox, n int) (deliver, processed []int64) {
	t.Helper()
	ctx := context.Background()
	if _, err := o.PG.Exec(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version, status)
	  SELECT 'legacy', now() - interval '1 day', 'prod', jsonb_build_object('g', g, 'pad', repeat('x', 200)), 1,
	         CASE WHEN g % 10 = 0 THEN 'failed' WHEN g % 4 = 0 THEN 'processed' ELSE 'pending' END
	  FROM generate_series(1, $1) g`, n); err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		where string
		ids   *[]int64
	}{{"status <> 'processed'", &deliver}, {"status = 'processed'", &processed}} {
		rows, err := o.PG.Query(ctx, `SELECT id FROM event_outbox WHERE `+q.where)
		if err != nil {
			t.Fatal(err)
		}
		if *q.ids, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			t.Fatal(err)
		}
	}
	return deliver, processed
}

// assertDelivered checks ClickHouse holds exactly want and the outbox says
// processed for want and for the rows processed before.
func assertDelivered(t *testing.T, o *testenv.Outbox, want []int64, processedBefore int) {
	t.Helper()
	count, uniq := o.CHCount()
	if count != uniq || count != uint64(len(want)) {
		t.Errorf("ClickHouse count()=%d uniqExact(id)=%d, want %d", count, uniq, len(want))
	}
	have := map[int64]bool{}
	for _, id := range o.CHIDs() {
		have[id] = true
	}
	for _, id := range want {
		if !have[id] {
			t.Fatalf("id %d missing from ClickHouse", id)
		}
	}
	if st := o.StatusCounts(); len(st) != 1 || st["processed"] != int64(len(want)+processedBefore) {
		t.Errorf("outbox statuses %v, want all %d processed", st, len(want)+processedBefore)
	}
}

func backfillDone(t *testing.T, o *testenv.Outbox) bool {
	var done bool
	if err := o.PG.QueryRow(context.Background(), `SELECT backfill_done FROM cdc_slot_state WHERE slot = $1`, o.Slot).Scan(&done); err != nil {
		return false
	}
	return done
}

// Switching over from the polling design: pending and failed rows are
// delivered through the slot's snapshot, processed ones are not, and a
// daemon killed in the middle of that backfill resumes without loss or
// duplicates.
func TestBackfillResumesAfterKill(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	deliver, processed := legacyRows(t, o, 80000)
	// Batches of 500 that do not grow (batch.max_rows): many inserts, so
	// the kill lands mid-backfill.
	env := append(o.Env(), "CDC_BATCH_SIZE=500", "CDC_BATCH_MAX_ROWS=500", "CDC_HTTP_LISTEN=127.0.0.1:0")
	dir := t.TempDir()
	p := startDaemon(t, bin, env, dir, "first")
	waitUntil(t, "backfill under way", 60*time.Second, func() bool { n, _ := o.CHCount(); return n > 0 })
	p.kill()
	if backfillDone(t, o) {
		t.Fatal("the backfill finished before the kill: this test needs more legacy rows to kill it midway")
	}
	got, _ := o.CHCount()
	t.Logf("killed mid-backfill with %d of %d rows in ClickHouse", got, len(deliver))
	// Rows committed after the slot exists come through the stream.
	live := o.MustInsert(300, true)
	p2 := startDaemon(t, bin, env, dir, "second")
	o.WaitCH(uint64(len(deliver)+len(live)), 120*time.Second)
	if code := p2.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	if !backfillDone(t, o) {
		t.Error("backfill not recorded as done")
	}
	assertDelivered(t, o, append(deliver, live...), len(processed))
}

// A slot created by a daemon that died before recording its backfill list
// is dropped and created again, and everything pending is delivered once.
func TestInterruptedSlotCreationIsRedone(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	deliver, processed := legacyRows(t, o, 500)
	if _, err := o.PG.Exec(context.Background(), `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, o.Slot); err != nil {
		t.Fatal(err)
	}
	p := startDaemon(t, bin, append(o.Env(), "CDC_HTTP_LISTEN=127.0.0.1:0"), t.TempDir(), "cdc")
	o.WaitCH(uint64(len(deliver)), 60*time.Second)
	if code := p.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	if !logContains(p.log, "interrupted creation") {
		t.Error("log does not explain that the slot was re-created")
	}
	assertDelivered(t, o, deliver, len(processed))
}

// A slot whose WAL was removed must not be streamed from. The daemon
// refuses, and stays up to say so until an operator acts: cdc_slot_lost 1,
// /readyz 503 with the reason and the recovery, one ERROR a minute (a
// process that exits shows the gauge to no scrape). The documented recovery
// (drop the slot) is picked up by the running process, which re-creates the
// slot and delivers everything exactly once.
func TestLostSlotIsRefusedAndRecovered(t *testing.T) {
	bin := cdcBinary(t)
	srv := testenv.StartPrivate(t, "lostslot")
	env := []string{"CDC_POSTGRES_URL=" + srv.PGURL, "CDC_CLICKHOUSE_ADDR=" + srv.CHAddr, "CDC_CLICKHOUSE_DATABASE=lost", "CDC_POSTGRES_SLOT=cdc",
		"CDC_LOG_FORMAT=json", "CDC_BATCH_FLUSH_INTERVAL=50ms", "CDC_HTTP_LISTEN=127.0.0.1:0", "CDC_RETRY_MAX_BACKOFF=500ms"}
	migrate(t, bin, env)
	o := testenv.OpenOutbox(t, srv.PGURL, srv.CHAddr, "lost")
	ctx := context.Background()
	for _, q := range []string{`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`, `ALTER SYSTEM SET max_wal_size = '32MB'`,
		`ALTER SYSTEM SET min_wal_size = '32MB'`, `SELECT pg_reload_conf()`} {
		if _, err := o.PG.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	first := o.MustInsert(100, true)
	p := startDaemon(t, bin, env, dir, "first")
	o.WaitCH(100, 60*time.Second)
	if code := p.terminate(t, 30*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	// Committed while no daemon runs, then the WAL holding them goes away.
	second := o.MustInsert(100, true)
	if _, err := o.PG.Exec(ctx, `CREATE TABLE filler (x text)`); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "slot lost", 120*time.Second, func() bool {
		for _, q := range []string{`INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 4000)`, `SELECT pg_switch_wal()`, `CHECKPOINT`} {
			if _, err := o.PG.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		var status string
		o.PG.QueryRow(ctx, `SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1`, o.Slot).Scan(&status)
		return status == "lost"
	})

	port := testenv.FreePort(t)
	p2 := startDaemon(t, bin, withListen(withEnv(env, "CDC_REPLICATION_STANDBY_RETRY=200ms"), port), dir, "second")
	readyz := func() (int, string) { return httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", port)) }
	waitUntil(t, "/readyz naming the lost slot", 60*time.Second, func() bool {
		code, body := readyz()
		return code == 503 && strings.Contains(body, "invalidated") && strings.Contains(body, "pg_drop_replication_slot")
	})
	waitUntil(t, "cdc_slot_lost 1", 30*time.Second, func() bool { return scrape(t, port)["cdc_slot_lost"] == 1 })
	time.Sleep(3 * time.Second) // it stays up, and does not repeat the ERROR within a minute
	select {
	case <-p2.done:
		t.Fatalf("cdc run exited on a lost slot instead of reporting it:\n%s", tail(p2.log, 10))
	default:
	}
	b, _ := os.ReadFile(p2.log)
	if n := strings.Count(string(b), `"msg":"replication slot lost`); n != 1 {
		t.Errorf("%d ERROR lines about the lost slot in the first seconds, want 1:\n%s", n, tail(p2.log, 10))
	}
	if o.StatusCounts()["processed"] != 100 {
		t.Errorf("rows were marked while the slot was lost: %v", o.StatusCounts())
	}

	// The documented recovery, with the process still running.
	if _, err := o.PG.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, o.Slot); err != nil {
		t.Fatal(err)
	}
	o.WaitCH(200, 60*time.Second)
	waitUntil(t, "ready again", 30*time.Second, func() bool { code, _ := readyz(); return code == 200 })
	if v := scrape(t, port)["cdc_slot_lost"]; v != 0 {
		t.Errorf("cdc_slot_lost %v after the recovery, want 0", v)
	}
	if code := p2.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	o.AssertExactlyOnce(append(first, second...), nil)
}

func runWithTimeout(cmd *exec.Cmd, d time.Duration) (string, error) {
	var b strings.Builder
	cmd.Stdout, cmd.Stderr = &b, &b
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return b.String(), err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return b.String(), fmt.Errorf("still running after %s", d)
	}
}

// peakRSS returns the process's peak resident set size in bytes.
func peakRSS(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return -1
}

// Memory must not grow with the size of one transaction or with a backlog
// held up by a ClickHouse outage: a 1,000,000-row transaction, then rows
// produced while ClickHouse is down, stay under the 100 MiB budget.
func TestBoundedMemory(t *testing.T) {
	rows := 1000000
	if testing.Short() {
		rows = 200000
	}
	bin := cdcBinary(t)
	srv := testenv.StartPrivate(t, "memory")
	env := []string{"CDC_POSTGRES_URL=" + srv.PGURL, "CDC_CLICKHOUSE_ADDR=" + srv.CHAddr, "CDC_CLICKHOUSE_DATABASE=mem",
		"CDC_LOG_FORMAT=json", "CDC_HTTP_LISTEN=127.0.0.1:0", "CDC_RETRY_MAX_BACKOFF=1s"}
	migrate(t, bin, env)
	o := testenv.OpenOutbox(t, srv.PGURL, srv.CHAddr, "mem")
	p := startDaemon(t, bin, env, t.TempDir(), "cdc")
	waitUntil(t, "streaming", 30*time.Second, func() bool { return logContains(p.log, `"msg":"streaming"`) })

	o.MustInsert(rows, true)
	o.WaitCH(uint64(rows), 10*time.Minute)
	afterTxn := peakRSS(p.cmd.Process.Pid)

	srv.Script(t, "ch-stop")
	for i := 0; i < 20; i++ {
		o.MustInsert(10000, true)
	}
	time.Sleep(20 * time.Second) // the outage: the daemon retries, the backlog stays in PostgreSQL
	srv.Script(t, "ch-start")
	o.WaitCH(uint64(rows+200000), 10*time.Minute)
	peak := peakRSS(p.cmd.Process.Pid)
	if code := p.terminate(t, 60*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	t.Logf("peak RSS: %.1f MiB after a %d-row transaction, %.1f MiB after a ClickHouse outage with 200000 rows behind",
		float64(afterTxn)/(1<<20), rows, float64(peak)/(1<<20))
	if afterTxn <= 0 || peak <= 0 {
		t.Fatal("could not read the daemon's peak RSS")
	}
	if peak > 100<<20 {
		t.Errorf("peak RSS %.1f MiB exceeds the 100 MiB budget", float64(peak)/(1<<20))
	}
	if n, u := o.CHCount(); n != u || n != uint64(rows+200000) {
		t.Errorf("ClickHouse count %d uniq %d, want %d", n, u, rows+200000)
	}
}
