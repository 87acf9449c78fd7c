package main

// Fencing (DESIGN.md §3 invariant 10, issue 13): once a successor may have
// started writing, an instance that lost, or may have lost, its lock writes
// nothing more. These tests take a lock away the way a connection pooler or
// an administrator does (pg_terminate_backend on the lock's session, or on
// every regular session of the process) while the old holder keeps running,
// let a successor take over, and then judge only the outcome: every row in
// ClickHouse exactly once and marked processed. They know nothing of how
// the fence is built.
//
// CDC_FENCE_RUNS repeats each scenario (default 1); CDC_FENCE_ROWS sets the
// rows of the backfill and retry-failed scenarios (default 150000).

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// Leader change in the middle of the backfill of rows that predate the slot:
// the old leader's lock session is terminated while it keeps running, and a
// standby with a short retry takes over at once.
func TestLeaderChangeDuringBackfill(t *testing.T) {
	rows := envInt("CDC_FENCE_ROWS", 150000)
	kills := []fenceKill{{"", (*fenceCase).killLeaderLock}}
	eachFenceRun(t, kills, func(f *fenceCase, k fenceKill) {
		ids := f.pendingRows(rows, "pending")
		// The backfill runs before the stream: a leads once it holds the lock.
		a, b := f.leaderAndStandby("holds the leader lock", func(*fenceProc) bool {
			return len(f.lockHolders(f.leaderKey())) == 1
		})
		// A tenth in: both the old leader's and the successor's share of
		// the backfill are large.
		f.killMidway("backfill", a, k, len(ids), len(ids)/10, func() bool { return backfillDone(f.t, f.o) })
		f.handedOver(a, b, ids, nil)
	})
}

// The same pooler kill while a leader streams under load and a standby
// waits: first only the leader-lock session, then every regular session of
// the leader (its replication connection is left alone, as a pooler would:
// poolers do not carry replication connections).
func TestLeaderChangeDuringStreaming(t *testing.T) {
	eachFenceRun(t, killVariants((*fenceCase).killLeaderLock), func(f *fenceCase, k fenceKill) {
		a, b := f.leaderAndStandby("streaming", (*fenceProc).ready)
		ctx, stopProducers := context.WithCancel(context.Background())
		prods := f.produce(ctx, 3)
		time.Sleep(2 * time.Second)
		walsenders := f.walsenders(a)
		killed := k.kill(f, a)
		f.t.Logf("killed %v of a; a's walsenders %v", killed, walsenders)
		// Past a's 5 s lock check, so the change of hands happens under
		// load.
		time.Sleep(8 * time.Second)
		stopProducers()
		committed, rolledBack := prods.wait(f.t)
		if len(committed) == 0 {
			f.t.Fatal("the producers committed nothing")
		}
		f.handedOver(a, b, committed, rolledBack)
	})
}

// Re-driving failed rows with `cdc retry-failed` while a pooler kills its
// retry-lock session (or every regular session of it) and a second
// `cdc retry-failed` starts: no row may reach ClickHouse twice. Rows left
// failed by a re-drive that gave up are delivered by running it once more,
// as an operator would.
func TestRetryFailedLockKill(t *testing.T) {
	rows := envInt("CDC_FENCE_ROWS", 150000)
	eachFenceRun(t, killVariants((*fenceCase).killRetryLock), func(f *fenceCase, k fenceKill) {
		t := f.t
		ids := f.pendingRows(rows, "failed")
		r1 := f.startCmd("r1", "retry-failed")
		waitUntil(t, "r1 holds the retry lock", 30*time.Second, func() bool {
			return len(f.lockHolders(f.retryKey())) == 1
		})
		f.killMidway("re-drive", r1, k, len(ids), 1, func() bool { return !r1.running() })
		r2 := f.startCmd("r2", "retry-failed")
		for _, p := range []*fenceProc{r1, r2} {
			select {
			case <-p.done:
			case <-time.After(3 * time.Minute):
				t.Fatalf("%s still running after 3m\n%s", p.name, tail(p.log, 20))
			}
			t.Logf("%s exited %d: %s", p.name, p.cmd.ProcessState.ExitCode(), strings.TrimSpace(tail(p.log, 1)))
		}
		// A re-drive that lost its lock may give up and leave rows failed;
		// the next one, alone, must deliver them once.
		if st := f.o.StatusCounts(); st["processed"] != int64(len(ids)) {
			t.Logf("after both re-drives: %v; running a third", st)
			r3 := f.startCmd("r3", "retry-failed")
			<-r3.done
			if r3.err != nil {
				t.Errorf("r3: %v\n%s", r3.err, tail(r3.log, 20))
			}
		}
		f.o.AssertExactlyOnce(ids, nil)
		f.report()
	})
}

// The leader's periodic re-drive of failed rows (failed.retry_interval) is
// under way when a pooler takes its locks away; the standby takes over and
// re-drives too. The failed rows are made as a poison episode leaves them:
// delivered once, gone from ClickHouse, marked failed in the outbox.
func TestLeaderChangeDuringRedrive(t *testing.T) {
	rows := envInt("CDC_FENCE_ROWS", 150000)
	eachFenceRun(t, killVariants((*fenceCase).killLeaderLock), func(f *fenceCase, k fenceKill) {
		f.env = append(f.env, "CDC_FAILED_RETRY_INTERVAL=500ms")
		a, b := f.leaderAndStandby("streaming", (*fenceProc).ready)
		ids := f.pendingRows(rows, "pending")
		f.waitProcessed(int64(len(ids)), 3*time.Minute)
		f.failDelivered()
		f.killMidway("re-drive", a, k, len(ids), len(ids)/10, func() bool { return false })
		f.handedOver(a, b, ids, nil)
		for _, p := range []*fenceProc{a, b} {
			f.t.Logf("%s: %d re-drives logged", p.name, strings.Count(readFile(p.log), "re-drove failed rows"))
		}
	})
}

// fenceKill is one way of taking a process's lock away.
type fenceKill struct {
	name string
	kill func(f *fenceCase, p *fenceProc) []int32
}

// killVariants are the two ways a pooler or an administrator takes a lock
// away: the lock's own session, or every regular session of the process.
func killVariants(lock func(f *fenceCase, p *fenceProc) []int32) []fenceKill {
	return []fenceKill{{"lock session", lock}, {"all regular sessions", (*fenceCase).killClientSessions}}
}

// eachFenceRun runs the scenario CDC_FENCE_RUNS times for each kill, every
// run on a fresh outbox (a fenceCase of its own).
func eachFenceRun(t *testing.T, kills []fenceKill, scenario func(f *fenceCase, k fenceKill)) {
	bin := cdcBinary(t)
	for run := 1; run <= envInt("CDC_FENCE_RUNS", 1); run++ {
		for _, k := range kills {
			name := fmt.Sprintf("run%d", run)
			if k.name != "" {
				name = k.name + "/" + name
			}
			t.Run(name, func(t *testing.T) { scenario(newFenceCase(t, bin), k) })
		}
	}
}

// leaderAndStandby starts instance a, waits until leads(a), then starts b
// and waits until b stands by behind it.
func (f *fenceCase) leaderAndStandby(what string, leads func(a *fenceProc) bool) (a, b *fenceProc) {
	f.t.Helper()
	a = f.start("a")
	waitUntil(f.t, "a "+what, 30*time.Second, func() bool { return leads(a) })
	b = f.start("b")
	f.waitStandby(b)
	return a, b
}

// killMidway waits until at least min of total rows are in ClickHouse, then
// applies k to p. A delivery that finished first (every row in ClickHouse,
// or done() says so) makes the run worthless, not green: the lock must be
// lost with work in hand.
func (f *fenceCase) killMidway(what string, p *fenceProc, k fenceKill, total, min int, done func() bool) {
	f.t.Helper()
	waitUntil(f.t, what+" under way", 60*time.Second, func() bool { n, _ := f.o.CHCount(); return n >= uint64(min) })
	inCH, _ := f.o.CHCount()
	if inCH >= uint64(total) || done() {
		f.t.Fatalf("the %s finished before %s's sessions could be killed (%d of %d rows in ClickHouse): raise CDC_FENCE_ROWS", what, p.name, inCH, total)
	}
	killed := k.kill(f, p)
	f.t.Logf("killed %v of %s with %d of %d rows in ClickHouse", killed, p.name, inCH, total)
}

// handedOver judges a change of hands from old to successor: every
// committed row processed, only the successor leading, every process
// stopped cleanly, and ClickHouse holding each committed row exactly once.
func (f *fenceCase) handedOver(old, successor *fenceProc, committed, rolledBack []int64) {
	f.t.Helper()
	f.waitProcessed(int64(len(committed)), 3*time.Minute)
	f.waitOneLeader(old, successor)
	f.stopAll()
	f.o.AssertExactlyOnce(committed, rolledBack)
	f.report()
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// failDelivered turns every delivered row into a failed one that is not in
// ClickHouse: the rows leave ClickHouse first (a mutation, awaited), and only
// then become failed, so no re-drive can find them there.
func (f *fenceCase) failDelivered() {
	f.t.Helper()
	ctx := context.Background()
	if err := f.o.CH.Exec(ctx, fmt.Sprintf("ALTER TABLE `%s`.events DELETE WHERE 1 = 1", f.o.CHDB)); err != nil {
		f.t.Fatalf("clear ClickHouse: %v", err)
	}
	waitUntil(f.t, "ClickHouse empty", 60*time.Second, func() bool { n, _ := f.o.CHCount(); return n == 0 })
	if _, err := f.o.PG.Exec(ctx, `UPDATE event_outbox SET status = 'failed', attempts = 1, last_error = 'rejected before'`); err != nil {
		f.t.Fatalf("mark rows failed: %v", err)
	}
}

// fenceCase is one scenario: a fresh outbox, migrated by `cdc migrate`, and
// the cdc processes started against it. Each process connects with its own
// application_name, so its sessions can be found in pg_stat_activity.
type fenceCase struct {
	t     *testing.T
	bin   string
	o     *testenv.Outbox
	env   []string
	dir   string
	procs []*fenceProc
}

func newFenceCase(t *testing.T, bin string) *fenceCase {
	o := testenv.NewOutbox(t)
	env := append(o.Env(),
		"CDC_REPLICATION_STANDBY_RETRY=100ms",
		"CDC_BATCH_SIZE=1000",
		"CDC_HTTP_LISTEN=127.0.0.1:0",
	)
	migrate(t, bin, env)
	return &fenceCase{t: t, bin: bin, o: o, env: env, dir: t.TempDir()}
}

// fenceProc is one cdc process of a scenario, with the application_name
// its sessions carry and the port of its HTTP listener.
type fenceProc struct {
	*daemonProc
	app  string
	port int
}

// start starts `cdc run` as instance name.
func (f *fenceCase) start(name string) *fenceProc { return f.startCmd(name, "run") }

// startCmd starts a cdc subcommand whose sessions carry application_name
// "cdc-<name>" and whose HTTP listener is on a port of its own.
func (f *fenceCase) startCmd(name string, args ...string) *fenceProc {
	t := f.t
	t.Helper()
	p := &fenceProc{app: "cdc-" + name, port: testenv.FreePort(t)}
	// Later entries win: the URL and listener of this instance.
	env := slices.Concat(f.env, []string{
		"CDC_POSTGRES_URL=" + withAppName(t, f.o.PGURL, p.app),
		fmt.Sprintf("CDC_HTTP_LISTEN=127.0.0.1:%d", p.port),
	})
	p.daemonProc = startProc(t, f.bin, env, f.dir, name, args...)
	f.procs = append(f.procs, p)
	return p
}

// ready reports whether p's /readyz answers 200: it streams.
func (p *fenceProc) ready() bool {
	code, _ := httpGet(p.url("/readyz"))
	return code == 200
}

func (p *fenceProc) url(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", p.port, path)
}

// leader reports the process's cdc_leader gauge; a process that is gone or
// does not answer leads nothing.
func (p *fenceProc) leader() bool {
	code, body := httpGet(p.url("/metrics"))
	if code != 200 {
		return false
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, "cdc_leader "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return err == nil && n == 1
		}
	}
	return false
}

func withAppName(t *testing.T, pgURL, app string) string {
	u, err := url.Parse(pgURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	return u.String()
}

// pendingRows inserts n outbox rows with the given status in one statement
// and returns their ids. Failed rows get one attempt and an error, as the
// daemon's MarkFailed leaves them.
func (f *fenceCase) pendingRows(n int, status string) []int64 {
	f.t.Helper()
	ctx := context.Background()
	rows, err := f.o.PG.Query(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version, status, attempts, last_error)
	  SELECT 'legacy', now() - interval '1 day', 'prod', jsonb_build_object('g', g, 'pad', repeat('x', 200)), 1,
	         $2::text, CASE WHEN $2::text = 'failed' THEN 1 ELSE 0 END, CASE WHEN $2::text = 'failed' THEN 'rejected before' END
	  FROM generate_series(1, $1::int) g RETURNING id`, n, status)
	if err != nil {
		f.t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		f.t.Fatalf("insert %d %s rows: %v", n, status, err)
	}
	return ids
}

func (f *fenceCase) leaderKey() string { return "outbox-cdc:" + f.o.Slot }
func (f *fenceCase) retryKey() string  { return "outbox-cdc:retry:public.event_outbox" }

// lockHolders returns the sessions of the outbox's database that hold the
// session advisory lock pg_try_advisory_lock(hashtext(key)). A bigint key
// shows in pg_locks as classid (high 32 bits) and objid (low 32 bits) with
// objsubid 1.
func (f *fenceCase) lockHolders(key string) []int32 {
	f.t.Helper()
	return f.pids(`SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
	  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND d.datname = current_database()
	    AND l.classid = ((hashtext($1)::bigint >> 32) & 4294967295)::oid
	    AND l.objid = (hashtext($1)::bigint & 4294967295)::oid`, key)
}

// walsenders returns p's replication sessions.
func (f *fenceCase) walsenders(p *fenceProc) []int32 {
	return f.pids(`SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND backend_type = 'walsender'`, p.app)
}

func (f *fenceCase) pids(q string, args ...any) []int32 {
	f.t.Helper()
	rows, err := f.o.PG.Query(context.Background(), q, args...)
	if err != nil {
		f.t.Fatalf("list sessions: %v", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		f.t.Fatalf("list sessions: %v", err)
	}
	return pids
}

// killLeaderLock terminates p's session holding the slot's leader lock.
func (f *fenceCase) killLeaderLock(p *fenceProc) []int32 { return f.killLock(p, f.leaderKey()) }

// killRetryLock terminates p's session holding the retry-failed lock.
func (f *fenceCase) killRetryLock(p *fenceProc) []int32 { return f.killLock(p, f.retryKey()) }

func (f *fenceCase) killLock(p *fenceProc, key string) []int32 {
	f.t.Helper()
	holders := f.lockHolders(key)
	mine := f.pids(`SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid = ANY($2)`, p.app, holders)
	if len(mine) != 1 {
		f.t.Fatalf("lock %q is held by sessions %v, of which %v are %s's: want exactly one of %s's", key, holders, mine, p.name, p.name)
	}
	f.terminate(mine)
	return mine
}

// killClientSessions terminates every regular (non-replication) session
// of p, as a pooler restart or an administrator's sweep would.
func (f *fenceCase) killClientSessions(p *fenceProc) []int32 {
	f.t.Helper()
	pids := f.pids(`SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND backend_type = 'client backend'`, p.app)
	if len(pids) == 0 {
		f.t.Fatalf("%s has no regular sessions to kill", p.name)
	}
	f.terminate(pids)
	return pids
}

// terminate ends the sessions and waits until they are gone, so that the
// locks they held are free when it returns.
func (f *fenceCase) terminate(pids []int32) {
	f.t.Helper()
	ctx := context.Background()
	if _, err := f.o.PG.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid`, pids); err != nil {
		f.t.Fatalf("terminate sessions %v: %v", pids, err)
	}
	waitUntil(f.t, "terminated sessions gone", 10*time.Second, func() bool {
		return len(f.pids(`SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)`, pids)) == 0
	})
}

// waitStandby waits until p is up and not leading (it waits for the lock).
func (f *fenceCase) waitStandby(p *fenceProc) {
	f.t.Helper()
	waitUntil(f.t, p.name+" standing by", 30*time.Second, func() bool {
		code, _ := httpGet(p.url("/healthz"))
		return code == 200 && logContains(p.log, "standby")
	})
	if p.leader() {
		f.t.Fatalf("%s leads although another instance holds the lock", p.name)
	}
}

// waitProcessed waits until want rows are processed and at least as many
// are in ClickHouse.
func (f *fenceCase) waitProcessed(want int64, timeout time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := f.o.StatusCounts()
		n, _ := f.o.CHCount()
		if st["processed"] >= want && n >= uint64(want) {
			return
		}
		if time.Now().After(deadline) {
			f.dumpLogs()
			f.t.Fatalf("after %s: outbox %v, ClickHouse %d rows, want %d processed", timeout, st, n, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitOneLeader waits until exactly one of the instances says it leads and
// the first (the one whose lock was killed) has stepped down or exited. Its
// last chance to write is before that, so the counts are read after it.
func (f *fenceCase) waitOneLeader(old *fenceProc, others ...*fenceProc) {
	f.t.Helper()
	all := append([]*fenceProc{old}, others...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		leaders := 0
		for _, p := range all {
			if p.leader() {
				leaders++
			}
		}
		if leaders == 1 && !old.leader() {
			return
		}
		if time.Now().After(deadline) {
			f.dumpLogs()
			f.t.Fatalf("30s after delivery: %d instances claim leadership (want 1), %s leads: %v", leaders, old.name, old.leader())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stopAll sends SIGTERM to every running process and expects exit 0.
func (f *fenceCase) stopAll() {
	f.t.Helper()
	for _, p := range f.procs {
		if !p.running() {
			continue
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			if p.err != nil {
				f.t.Errorf("%s: exit %v after SIGTERM\n%s", p.name, p.err, tail(p.log, 20))
			}
		case <-time.After(45 * time.Second):
			f.t.Errorf("%s did not exit within 45s of SIGTERM", p.name)
			p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// report logs a summary of the ClickHouse table; on failure, the logs.
func (f *fenceCase) report() {
	count, uniq := f.o.CHCount()
	f.t.Logf("ClickHouse count()=%d uniqExact(id)=%d: %d duplicates", count, uniq, count-uniq)
	if f.t.Failed() {
		f.dumpLogs()
	}
}

func (f *fenceCase) dumpLogs() {
	for _, p := range f.procs {
		f.t.Logf("--- %s\n%s", p.name, tail(p.log, 15))
	}
}

// producers commit transactions through the test's own pool (not touched by
// the kills) until their context ends.
type producers struct {
	wg  sync.WaitGroup
	mu  sync.Mutex
	res []*testenv.Producer
	err []error
}

func (f *fenceCase) produce(ctx context.Context, n int) *producers {
	ps := &producers{}
	for i := 0; i < n; i++ {
		ps.wg.Add(1)
		go func() {
			defer ps.wg.Done()
			p, err := f.o.Produce(ctx, 50, 2*time.Millisecond)
			ps.mu.Lock()
			ps.res = append(ps.res, p)
			if err != nil {
				ps.err = append(ps.err, err)
			}
			ps.mu.Unlock()
		}()
	}
	return ps
}

func (ps *producers) wait(t *testing.T) (committed, rolledBack []int64) {
	t.Helper()
	ps.wg.Wait()
	for _, err := range ps.err {
		t.Errorf("producer: %v", err)
	}
	txns := 0
	for _, p := range ps.res {
		committed = append(committed, p.Committed...)
		rolledBack = append(rolledBack, p.RolledBack...)
		txns += p.Txns
	}
	t.Logf("producers: %d transactions, %d rows committed, %d rolled back", txns, len(committed), len(rolledBack))
	return committed, rolledBack
}
