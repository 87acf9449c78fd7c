package main

// PostgreSQL primary failover, end to end (issue 13, DESIGN.md §3
// invariant 11).
//
// Set-up of every run:
//   - testenv.StartCluster: a private PostgreSQL primary (node0) and a
//     synchronous streaming standby (node1) on free ports, each in its own
//     /tmp dir, as the `postgres` OS user; synchronous_standby_names = '*'
//     and synchronous_commit = on, so every commit a producer saw succeed is
//     on the standby before the failover;
//   - the real `cdc` binary and the producers reach PostgreSQL only through
//     the multi-host URL postgres://…@127.0.0.1:p0,127.0.0.1:p1/cdc?…&
//     target_session_attrs=read-write, which leads every connection
//     (replication, pool, leader lock) to whichever node is the primary;
//   - ClickHouse is a fresh database on the shared test server.
//
// Steps: `cdc migrate`; rows from the polling era (pending, failed, processed)
// that the slot's backfill must deliver (or skip); `cdc run`; producers commit
// transactions continuously (about one in ten rolled back) and record which
// ids committed; mid-stream the primary is stopped with `-m immediate` and the
// standby promoted; the producers go on against the new primary. A commit
// that fails during the failover is unknown to its producer: the new primary
// says whether it exists.
//
// Checks: no acknowledged commit is missing on the new primary (the cluster
// keeps its promise); cdc re-created its slot there (PostgreSQL < 17 has no
// failover slots) and holds every connection there under its
// application_name (a walsender on the active slot, the leader lock, pool
// connections); after catching up ClickHouse count() == uniqExact(id) ==
// the rows to deliver on the new primary, exactly those ids, and every
// outbox row is `processed`.
//
// TestPrimaryFailoverCarriesTheSlot runs the same steps on PostgreSQL 17+
// with failover slots (ClusterOptions.FailoverSlots): there the checks are
// the opposite for the slot — carried over by the promotion, not created
// again, no second backfill (failoverslot_test.go) — and the same for rows.
//
// CDC_FAILOVER_RUNS repeats the whole run (default 1, about 30–40 s).

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/backfill"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// failoverApp is the application_name cdc's connections carry in this test,
// which tells them apart in pg_stat_activity on the new primary.
const failoverApp = "cdc-failover-test"

func TestPrimaryFailover(t *testing.T) {
	repeatFailover(t, failoverCase{})
}

// TestPrimaryFailoverCarriesTheSlot is the failover on PostgreSQL 17+ with
// failover slots (issue 24): cdc creates its slot with FAILOVER (the default
// postgres.failover_slot: auto), the standby's slot sync worker keeps a copy,
// and after the promotion cdc goes on streaming from that copy. Unlike
// TestPrimaryFailover: the slot is not created again, nothing is backfilled
// again (cdc_slot_state keeps the first slot's row), and the slot on the new
// primary is a failover slot that is no longer a synced copy. Rows the copy
// had not confirmed yet are streamed again from the new primary and must be
// recognised as stored.
//
// On a PostgreSQL older than 17 (CDC_TEST_PGBIN, Debian's 15 by default)
// the cluster runs `scripts/pg.sh 17`'s binaries, so the default `make test`
// runs it too; it fails when it cannot get them.
func TestPrimaryFailoverCarriesTheSlot(t *testing.T) {
	pgbin, major := testenv.PGBinAtLeast(t, 17)
	t.Logf("PostgreSQL %d from %s", major, pgbin)
	repeatFailover(t, failoverCase{opts: testenv.ClusterOptions{BinDir: pgbin, FailoverSlots: true}, carriesSlot: true})
}

// failoverCase is what tells the two failovers apart: the cluster, and
// whether the slot comes through the promotion (17+ failover slots) or cdc
// re-creates it on the new primary and backfills.
type failoverCase struct {
	opts        testenv.ClusterOptions
	carriesSlot bool
}

// repeatFailover runs the failover CDC_FAILOVER_RUNS times (default 1) and
// logs a line per run.
func repeatFailover(t *testing.T, fc failoverCase) {
	bin := cdcBinary(t)
	runs := envInt("CDC_FAILOVER_RUNS", 1)
	var summary []string
	failed := 0
	for i := 1; i <= runs; i++ {
		var res failoverResult
		ok := t.Run(fmt.Sprintf("run%d", i), func(t *testing.T) { primaryFailoverRun(t, bin, fc, &res) })
		if !ok {
			failed++
		}
		line := fmt.Sprintf("run%d: ok=%v rows=%d duplicates=%d missing=%d stuck_pending=%d reconnect=%s",
			i, ok, res.rows, res.duplicates, res.missing, res.stuckPending, res.reconnect.Round(time.Millisecond))
		if fc.carriesSlot {
			line += fmt.Sprintf(" synced_copy_behind=%dB slot_creations=%d backfills=%d", res.syncedBehind, res.creations, res.backfills)
		}
		summary = append(summary, line)
	}
	t.Logf("%d of %d failover runs failed\n%s", failed, runs, strings.Join(summary, "\n"))
}

type failoverResult struct {
	rows, duplicates, missing int
	// Rows in ClickHouse that stayed `pending` in the outbox after the slot
	// was confirmed past them.
	stuckPending int
	reconnect    time.Duration // failover → cdc streaming from its slot on the new primary (backfill included)
	// With a carried slot: how far the standby's synced copy of the slot
	// was behind the primary's confirmed_flush_lsn just before the
	// failover (what cdc streams again), and cdc's slot creations and
	// backfills in the whole run (want 1 and 1: the first primary's).
	syncedBehind         int64
	creations, backfills int
}

// primaryFailoverRun fills res as it goes, so a run that stops with Fatal
// still reports what it measured.
func primaryFailoverRun(t *testing.T, bin string, fc failoverCase, res *failoverResult) {
	c := testenv.StartCluster(t, "failover", fc.opts)
	chAddr, chDB := testenv.ClickHouseAddr(t), testenv.NewClickHouseDB(t)
	const slot = "cdc_failover"
	env := append([]string{
		"CDC_POSTGRES_URL=" + c.URL() + "&application_name=" + failoverApp,
		"CDC_POSTGRES_SLOT=" + slot,
		"CDC_CLICKHOUSE_ADDR=" + chAddr,
		"CDC_CLICKHOUSE_DATABASE=" + chDB,
		"CDC_BATCH_SIZE=500",
	}, testenv.FastEnv()...)
	env = append(env, "CDC_HTTP_LISTEN=127.0.0.1:0")
	migrate(t, bin, env)
	o := testenv.OpenOutbox(t, c.URL(), chAddr, chDB)
	ctx := context.Background()
	legacy, preProcessed := legacyRows(t, o, 5000)

	p := startDaemon(t, bin, env, keptDir(t, "failover"), "cdc")
	waitUntil(t, "cdc streaming on the first primary", 60*time.Second, func() bool { return logContains(p.log, `"msg":"streaming"`) })
	var first slotState
	if fc.carriesSlot {
		first = carriedSlotBefore(t, c, slot)
	} else if n := slotsOn(t, c.StandbyURL(), slot); n != 0 {
		t.Fatalf("the standby has %d slot(s) %q before the failover: this test expects PostgreSQL < 17 without failover slots", n, slot)
	}

	prod := startFailoverProducers(o, 3)
	if fc.carriesSlot {
		waitSynced(t, c, slot)
	}
	time.Sleep(time.Duration(4000+rand.IntN(3000)) * time.Millisecond)
	if fc.carriesSlot {
		res.syncedBehind = syncedBehind(t, c, slot)
	}
	before, _ := o.CHCount()
	var produced int64
	if err := o.PG.QueryRow(ctx, `SELECT count(*) FROM event_outbox`).Scan(&produced); err != nil {
		t.Fatal(err)
	}
	failoverAt := time.Now()
	c.Failover(t)
	waitUntil(t, "cdc's slot active on the new primary", 60*time.Second, func() bool {
		var active bool
		err := queryRow(c.PrimaryURL(), `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, []any{slot}, &active)
		return err == nil && active
	})
	res.reconnect = time.Since(failoverAt)
	t.Logf("failed over with %d rows in ClickHouse of %d in the outbox; cdc streams from the new primary %s later",
		before, produced, res.reconnect.Round(time.Millisecond))
	time.Sleep(5 * time.Second) // producing on the new primary
	prod.stop()

	// The new primary says what committed.
	newPG := testenv.Connect(t, c.PrimaryURL())
	want := idsQuery(t, newPG, `SELECT id FROM event_outbox WHERE NOT (id = ANY($1)) ORDER BY id`, preProcessed)
	inTable := make(map[int64]bool, len(want))
	for _, id := range want {
		inTable[id] = true
	}
	lostAcked, unknownCommitted := 0, 0
	for _, id := range append(legacy, prod.committed...) {
		if !inTable[id] {
			lostAcked++
		}
	}
	if lostAcked > 0 {
		t.Errorf("%d acknowledged rows are not on the promoted standby: the synchronous standby lost commits (testenv cluster)", lostAcked)
	}
	// Transactions that are not acknowledged are told by their token, not
	// by their ids: the promoted standby may hand their ids out again.
	// nextval() is WAL-logged ahead, but only a commit waits for the
	// synchronous standby, so a rolled-back (or lost) transaction's advance
	// of the sequence may never reach it. (Seen: a producer's rolled-back
	// id 50755 was committed again by another producer on the new primary,
	// 37 ms after the promotion.)
	if err := newPG.QueryRow(ctx, `SELECT count(DISTINCT event_context->>'txn') FROM event_outbox WHERE event_context->>'txn' = ANY($1)`,
		prod.unknown).Scan(&unknownCommitted); err != nil {
		t.Fatal(err)
	}
	var rolledBackRows int
	if err := newPG.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE event_context->>'txn' = ANY($1)`,
		prod.rolledBack).Scan(&rolledBackRows); err != nil {
		t.Fatal(err)
	}
	if rolledBackRows > 0 {
		t.Errorf("%d rows of rolled-back transactions are in the outbox", rolledBackRows)
	}
	res.rows = len(want)
	t.Logf("rows to deliver: %d (%d legacy, %d acknowledged, %d of %d unknown commits made it); %d producer errors during the failover",
		len(want), len(legacy), len(prod.committed), unknownCommitted, len(prod.unknown), prod.errors)

	// Caught up: ClickHouse has every row and either every row is marked
	// or the slot was confirmed past the end of the producers' WAL (cdc
	// confirms a transaction only after marking its rows), after which no
	// status changes any more.
	var endLSN string
	if err := newPG.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&endLSN); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n, _ := o.CHCount()
		st := o.StatusCounts()
		if n >= uint64(len(want)) && st["processed"] == int64(len(want)+len(preProcessed)) {
			break
		}
		var confirmedPast bool
		err := newPG.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1`, slot, endLSN).Scan(&confirmedPast)
		if n >= uint64(len(want)) && err == nil && confirmedPast {
			stuck := deliveredButNotProcessed(t, o)
			res.stuckPending = len(stuck)
			t.Errorf("%d rows are in ClickHouse but not `processed` in the outbox, and the slot was confirmed past them (to %s): nothing marks them any more; e.g. %v%s",
				len(stuck), endLSN, stuck[:min(len(stuck), 10)], notProcessedSample(o))
			break
		}
		if !p.running() {
			t.Fatalf("cdc exited: %v\n%s", p.err, tail(p.log, 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("not caught up 2 minutes after the producers stopped: ClickHouse %d rows, want %d; statuses %v%s\n%s",
				n, len(want), st, notProcessedSample(o), tail(p.log, 30))
		}
		time.Sleep(200 * time.Millisecond)
	}

	creations := 2 // the first primary, then the promoted standby
	if fc.carriesSlot {
		creations = 1
		res.creations, res.backfills = assertSlotCarried(t, newPG, slot, first, p.log)
	}
	assertReconnected(t, newPG, slot, p.log, creations)
	if code := p.terminate(t, 45*time.Second); code != 0 {
		t.Errorf("cdc exited %d after SIGTERM\n%s", code, tail(p.log, 20))
	}

	count, uniq := o.CHCount()
	res.duplicates = int(count - uniq)
	if count != uniq || count != uint64(len(want)) {
		t.Errorf("ClickHouse count()=%d uniqExact(id)=%d, committed rows to deliver=%d (%d duplicates)%s",
			count, uniq, len(want), count-uniq, duplicateSample(o))
	}
	have := map[int64]bool{}
	for _, id := range o.CHIDs() {
		have[id] = true
	}
	for _, id := range want {
		if !have[id] {
			res.missing++
		}
		delete(have, id)
	}
	if res.missing > 0 || len(have) > 0 {
		t.Errorf("%d committed rows missing from ClickHouse, %d ids there that should not be (rolled back or processed before the slot)", res.missing, len(have))
	}
	if st := o.StatusCounts(); len(st) != 1 || st["processed"] != int64(len(want)+len(preProcessed)) {
		t.Errorf("outbox statuses %v, want all %d processed", st, len(want)+len(preProcessed))
	}
}

// deliveredButNotProcessed are the outbox rows that are not `processed`
// although ClickHouse has them.
func deliveredButNotProcessed(t *testing.T, o *testenv.Outbox) []int64 {
	t.Helper()
	inCH := map[int64]bool{}
	for _, id := range o.CHIDs() {
		inCH[id] = true
	}
	var stuck []int64
	rows, err := o.PG.Query(context.Background(), `SELECT id FROM event_outbox WHERE status IS DISTINCT FROM 'processed' ORDER BY id`)
	if err != nil {
		t.Fatalf("rows not processed: %v", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatalf("rows not processed: %v", err)
	}
	for _, id := range ids {
		if inCH[id] {
			stuck = append(stuck, id)
		}
	}
	return stuck
}

// notProcessedSample describes a few rows that are not `processed`: whether
// ClickHouse has them, and at which stream position (_lsn, _seq).
func notProcessedSample(o *testenv.Outbox) string {
	rows, err := o.PG.Query(context.Background(), `SELECT id, status, xmin::text FROM event_outbox WHERE status IS DISTINCT FROM 'processed' ORDER BY id LIMIT 10`)
	if err != nil {
		return fmt.Sprintf("; sample: %v", err)
	}
	type row struct {
		id           int64
		status, xmin string
	}
	sample, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.id, &x.status, &x.xmin)
	})
	if err != nil {
		return fmt.Sprintf("; sample: %v", err)
	}
	var b strings.Builder
	b.WriteString("; not processed, e.g. (id status xmin: clickhouse [_lsn] [_seq]):")
	for _, r := range sample {
		var lsns, seqs []uint64
		err := o.CH.QueryRow(context.Background(), fmt.Sprintf("SELECT groupArray(_lsn), groupArray(_seq) FROM `%s`.events WHERE id = ?", o.CHDB), r.id).Scan(&lsns, &seqs)
		fmt.Fprintf(&b, " %d %s %s: %v %v (err %v);", r.id, r.status, r.xmin, lsns, seqs, err)
	}
	return b.String()
}

// duplicateSample describes a few duplicated ids: the stream position
// (_lsn, _seq) of each copy tells which path wrote it (a backfill writes at
// its slot's consistent point minus one).
func duplicateSample(o *testenv.Outbox) string {
	rows, err := o.CH.Query(context.Background(), fmt.Sprintf(
		"SELECT id, groupArray(_lsn), groupArray(_seq) FROM `%s`.events GROUP BY id HAVING count() > 1 ORDER BY id LIMIT 5", o.CHDB))
	if err != nil {
		return fmt.Sprintf("; sample: %v", err)
	}
	defer rows.Close()
	var b strings.Builder
	b.WriteString("; e.g. id [_lsn] [_seq]:")
	for rows.Next() {
		var id int64
		var lsns, seqs []uint64
		if err := rows.Scan(&id, &lsns, &seqs); err != nil {
			return fmt.Sprintf("; sample: %v", err)
		}
		fmt.Fprintf(&b, " %d %v %v;", id, lsns, seqs)
	}
	return b.String()
}

// assertReconnected checks, on the new primary, that cdc created its slot
// the given number of times in the whole run (the log) and that each kind of connection cdc opens came back through the
// multi-host URL: the walsender streaming from the slot, the session holding
// the leader lock, and pool connections.
func assertReconnected(t *testing.T, pg *pgx.Conn, slot, log string, creations int) {
	t.Helper()
	ctx := context.Background()
	var active bool
	var walsenderApp string
	err := pg.QueryRow(ctx, `SELECT s.active, coalesce(a.application_name, '') FROM pg_replication_slots s
	  LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = $1`, slot).Scan(&active, &walsenderApp)
	if err != nil || !active || walsenderApp != failoverApp {
		t.Errorf("slot %q on the new primary: active=%v, streamed by %q (want %q), err %v", slot, active, walsenderApp, failoverApp, err)
	}
	if n := strings.Count(readFile(log), `"msg":"created replication slot"`); n != creations {
		t.Errorf("cdc logged %d slot creations, want %d", n, creations)
	}
	var lockHolders, poolConns, walsenders int
	err = pg.QueryRow(ctx, `SELECT
	    count(*) FILTER (WHERE a.backend_type = 'client backend' AND EXISTS
	      (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)),
	    count(*) FILTER (WHERE a.backend_type = 'client backend' AND NOT EXISTS
	      (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)),
	    count(*) FILTER (WHERE a.backend_type = 'walsender')
	  FROM pg_stat_activity a WHERE a.application_name = $1`, failoverApp).Scan(&lockHolders, &poolConns, &walsenders)
	if err != nil || lockHolders != 1 || poolConns < 1 || walsenders != 1 {
		t.Errorf("cdc's connections on the new primary: %d holding the leader lock (want 1), %d pool (want >= 1), %d walsenders (want 1), err %v",
			lockHolders, poolConns, walsenders, err)
	}
}

// failoverProducers commit transactions until stopped and keep what became
// of each: committed (their ids), rolled back, or unknown (the commit itself
// failed, as it does when the primary goes away: it may or may not have
// happened). Each transaction's rows carry its token in event_context.txn.
type failoverProducers struct {
	cancel              context.CancelFunc
	wg                  sync.WaitGroup
	mu                  sync.Mutex
	committed           []int64
	rolledBack, unknown []string // tokens
	errors              int
}

func startFailoverProducers(o *testenv.Outbox, n int) *failoverProducers {
	ctx, cancel := context.WithCancel(context.Background())
	p := &failoverProducers{cancel: cancel}
	for i := range n {
		p.wg.Go(func() {
			for txn := 0; ctx.Err() == nil; txn++ {
				commit := rand.IntN(10) != 0
				token := fmt.Sprintf("p%d-%d", i, txn)
				// Not ctx: a cancelled commit would be unknown for no reason.
				opCtx, done := context.WithTimeout(context.Background(), 10*time.Second)
				ids, err := o.InsertTagged(opCtx, token, 1+rand.IntN(30), commit)
				done()
				p.mu.Lock()
				switch {
				case err == nil && commit:
					p.committed = append(p.committed, ids...)
				case err == nil:
					p.rolledBack = append(p.rolledBack, token)
				case commit && len(ids) > 0: // the COMMIT failed
					p.unknown = append(p.unknown, token)
				}
				if err != nil {
					p.errors++
				}
				p.mu.Unlock()
				// About 5k rows/s in all: cdc keeps up, so the failover
				// catches it mid-stream rather than far behind.
				pause := time.Duration(3+rand.IntN(4)) * time.Millisecond
				if err != nil {
					pause = 50 * time.Millisecond
				}
				time.Sleep(pause)
			}
		})
	}
	return p
}

func (p *failoverProducers) stop() {
	p.cancel()
	p.wg.Wait()
}

// keptDir is a directory for cdc's logs that outlives a failed test.
func keptDir(t *testing.T, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "outbox-cdc-"+name+"-logs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cdc logs kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

func queryRow(url, sql string, args []any, dest ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql, args...).Scan(dest...)
}

func slotsOn(t *testing.T, url, slot string) int {
	t.Helper()
	var n int
	if err := queryRow(url, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, []any{slot}, &n); err != nil {
		t.Fatalf("slots on %s: %v", url, err)
	}
	return n
}

func idsQuery(t *testing.T, conn *pgx.Conn, sql string, args ...any) []int64 {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return ids
}

// A slot that is created again (on a promoted standby, or after the lost-slot
// runbook dropped it) by a daemon that dies before it records the new slot's
// backfill list. Unlike a first creation (TestInterruptedSlotCreationIsRedone),
// cdc_slot_state still holds the previous slot's row, backfill done, which a
// promoted standby got by replication. The next daemon must still see an
// interrupted creation: the rows that were not `processed` when the slot was
// created are delivered, none skipped. (Found by TestTorture's failover step:
// 213,294 rows stayed `pending` forever. On 81a927d, before
// backfill.BeginCreation, the slot alone reproduced it: 100 of 250 rows
// stayed `pending`.)
func TestInterruptedSlotRecreationIsRedone(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	env := append(o.Env(), "CDC_HTTP_LISTEN=127.0.0.1:0")
	dir := keptDir(t, "recreation")
	ctx := context.Background()
	first := o.MustInsert(100, true)
	p := startDaemon(t, bin, env, dir, "first")
	waitUntil(t, "first rows processed", 60*time.Second, func() bool { return o.StatusCounts()["processed"] == 100 })
	if code := p.terminate(t, 30*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !backfillDone(t, o) {
		t.Fatal("the first slot's state is not recorded as done")
	}
	// The slot goes away; rows committed meanwhile wait as `pending`. The
	// stopped daemon's walsender lets go of it a moment after the exit.
	waitUntil(t, "the slot released", 30*time.Second, func() bool {
		var active bool
		err := o.PG.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, o.Slot).Scan(&active)
		return err == nil && !active
	})
	if _, err := o.PG.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, o.Slot); err != nil {
		t.Fatal(err)
	}
	second := o.MustInsert(100, true)
	// A daemon creates the slot again and dies before recording its
	// backfill list: what it leaves is its mark of a creation under way
	// (over the old slot's row) and the slot.
	if err := backfill.BeginCreation(ctx, o.PG, o.Slot); err != nil {
		t.Fatal(err)
	}
	if _, err := o.PG.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, o.Slot); err != nil {
		t.Fatal(err)
	}
	p2 := startDaemon(t, bin, env, dir, "second")
	waitUntil(t, "second daemon streaming", 60*time.Second, func() bool { return logContains(p2.log, `"msg":"streaming"`) })
	third := o.MustInsert(50, true)
	deadline := time.Now().Add(30 * time.Second)
	for o.StatusCounts()["processed"] < 250 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if code := p2.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	o.AssertExactlyOnce(append(append(first, second...), third...), nil)
}
