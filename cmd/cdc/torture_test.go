package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// cdcBinary builds the real cdc binary once per test run.
func cdcBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cdc-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "cdc")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// daemonProc is one `cdc run` process.
type daemonProc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	done   chan struct{}
	err    error
	killed bool
}

// startDaemon starts `cdc run` with env added to the test's environment,
// its output in logDir/name.log.
func startDaemon(t *testing.T, bin string, env []string, logDir, name string) *daemonProc {
	t.Helper()
	return startProc(t, bin, env, logDir, name, "run")
}

// startProc starts the cdc subcommand args like startDaemon; the process is
// killed at the end of the test if it still runs.
func startProc(t *testing.T, bin string, env []string, logDir, name string, args ...string) *daemonProc {
	t.Helper()
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &daemonProc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *daemonProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *daemonProc) kill() {
	p.killed = true
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// terminate sends SIGTERM and returns the exit code.
func (p *daemonProc) terminate(t *testing.T, within time.Duration) int {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(within):
		t.Errorf("%s did not exit within %s of SIGTERM", p.name, within)
		p.kill()
	}
	return p.cmd.ProcessState.ExitCode()
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	out := ""
	for _, l := range lines {
		out += l + "\n"
	}
	return out
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestTorture runs the real daemon (a leader and a hot standby) against
// private servers while producers commit and roll back transactions, one of
// them very large, and kills daemons with SIGKILL at random moments, stops
// ClickHouse, restarts PostgreSQL and fails PostgreSQL over. Afterwards
// ClickHouse must hold every committed row exactly once, no rolled-back or
// previously processed row, and the outbox must say processed everywhere.
//
// PostgreSQL is a testenv.StartCluster pair: a primary with a synchronous
// streaming standby, reached by daemons and producers through the multi-host
// URL (target_session_attrs=read-write). A failover step stops the primary
// with `-m immediate`, promotes the standby (cdc re-creates its slot there
// and backfills what is not `processed`) and makes the old primary's node a
// new standby (pg_basebackup), ready for the next failover. A restart step
// restarts the primary `-m immediate`. ClickHouse is a private server
// (StartPrivateClickHouse) that the ClickHouse steps stop and start.
//
// CDC_TORTURE_KILLS sets the number of chaos steps (default 12; the long
// schedule is 100). CDC_TORTURE_FAILOVERS sets how many of them fail over,
// at random steps (default 1, and 1 per 25 steps in longer schedules).
func TestTorture(t *testing.T) {
	steps := envInt("CDC_TORTURE_KILLS", 12)
	bigRows := 20000
	if steps >= 50 {
		bigRows = 100000
	}
	failoverAt := failoverSteps(steps, envInt("CDC_TORTURE_FAILOVERS", max(1, steps/25)))
	bin := cdcBinary(t)
	srv := testenv.StartPrivateClickHouse(t, "torture")
	pg := testenv.StartCluster(t, "torture", testenv.ClusterOptions{})
	logDir := keptDir(t, "torture")
	env := append([]string{
		"CDC_POSTGRES_URL=" + pg.URL(),
		"CDC_CLICKHOUSE_ADDR=" + srv.CHAddr,
		"CDC_CLICKHOUSE_DATABASE=torture",
		"CDC_BATCH_SIZE=500",
	}, testenv.FastEnv()...)
	env = append(env, "CDC_HTTP_LISTEN=127.0.0.1:0")
	migrate(t, bin, env)
	o := testenv.OpenOutbox(t, pg.URL(), srv.CHAddr, "torture")
	ctx := context.Background()
	// Rows from the polling era: pending and failed ones must be delivered
	// by the backfill, processed ones must not be sent again.
	if _, err := o.PG.Exec(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version, status)
	  SELECT 'legacy', now() - interval '1 day', 'prod', jsonb_build_object('g', g), 1,
	         CASE WHEN g % 10 = 0 THEN 'failed' WHEN g % 3 = 0 THEN 'processed' ELSE 'pending' END
	  FROM generate_series(1, 3000) g`); err != nil {
		t.Fatal(err)
	}
	var preProcessed []int64
	rows, _ := o.PG.Query(ctx, `SELECT id FROM event_outbox WHERE status = 'processed'`)
	preProcessed, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}

	// Producers run through the whole schedule; errors (PostgreSQL
	// restarts) are tolerated: the table, not the producer, says what
	// committed.
	prodCtx, stopProducers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var rolledBack []int64
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for prodCtx.Err() == nil {
				commit := rand.IntN(10) != 0
				ids, err := o.Insert(ctx, 1+rand.IntN(50), commit)
				if err != nil {
					time.Sleep(200 * time.Millisecond)
					continue
				}
				if !commit {
					mu.Lock()
					rolledBack = append(rolledBack, ids...)
					mu.Unlock()
				}
				time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
			}
		}()
	}

	var procs []*daemonProc
	n := 0
	spawn := func() {
		n++
		procs = append(procs, startDaemon(t, bin, env, logDir, fmt.Sprintf("cdc-%03d", n)))
	}
	spawn() // leader
	spawn() // hot standby
	kills, chStops, pgRestarts, failovers := 0, 0, 0, 0
	start := time.Now()
	for step := 1; step <= steps; step++ {
		time.Sleep(time.Duration(300+rand.IntN(2200)) * time.Millisecond)
		switch {
		case failoverAt[step]:
			pg.Failover(t)
			failovers++
			// The next failover needs a standby; making it (pg_basebackup
			// of the new primary, synchronous again) is chaos of its own.
			pg.AddStandby(t)
		case step == steps/3:
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := o.Insert(ctx, bigRows, true); err != nil {
					t.Logf("big transaction failed (PostgreSQL restart?): %v", err)
				}
			}()
		case step%7 == 0:
			srv.Script(t, "ch-stop")
			time.Sleep(time.Duration(500+rand.IntN(2500)) * time.Millisecond)
			srv.Script(t, "ch-start")
			chStops++
		case step%11 == 0:
			pg.RestartPrimary(t)
			pgRestarts++
		}
		// Kill a random live daemon with SIGKILL and start a new one.
		var live []*daemonProc
		for _, p := range procs {
			if p.running() {
				live = append(live, p)
			} else if p.err != nil && !p.killed {
				t.Errorf("%s exited on its own: %v\n%s", p.name, p.err, tail(p.log, 20))
			}
		}
		if len(live) > 0 {
			live[rand.IntN(len(live))].kill()
			kills++
		}
		for running := len(live) - 1; running < 2; running++ {
			spawn()
		}
	}
	stopProducers()
	wg.Wait()

	var want []int64
	rows, err = o.PG.Query(ctx, `SELECT id FROM event_outbox WHERE NOT (id = ANY($1)) ORDER BY id`, preProcessed)
	if err != nil {
		t.Fatal(err)
	}
	if want, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		t.Fatal(err)
	}
	// Catching up after the last failover can mean a backfill of every row
	// still pending (a re-created slot): the run fails when delivery stops
	// making progress for two minutes, or after 20 minutes in all.
	lastProgress, lastProcessed, hardEnd := time.Now(), int64(-1), time.Now().Add(20*time.Minute)
	for {
		c, _ := o.CHCount()
		st := o.StatusCounts()
		if c >= uint64(len(want)) && st["processed"] == int64(len(want)+len(preProcessed)) {
			break
		}
		if st["processed"] != lastProcessed {
			lastProcessed, lastProgress = st["processed"], time.Now()
		}
		if time.Since(lastProgress) > 2*time.Minute || time.Now().After(hardEnd) {
			for _, p := range procs {
				t.Logf("--- %s\n%s", p.name, tail(p.log, 15))
			}
			t.Fatalf("not caught up after the schedule: clickhouse %d rows, want %d; statuses %v%s", c, len(want), st, notProcessedSample(o))
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, p := range procs {
		if p.running() {
			if code := p.terminate(t, 45*time.Second); code != 0 {
				t.Errorf("%s exited %d after SIGTERM\n%s", p.name, code, tail(p.log, 20))
			}
		}
	}
	count, uniq := o.CHCount()
	if count != uniq || count != uint64(len(want)) {
		t.Errorf("ClickHouse count()=%d uniqExact(id)=%d, committed rows to deliver=%d%s", count, uniq, len(want), duplicateSample(o))
	}
	have := map[int64]bool{}
	for _, id := range o.CHIDs() {
		have[id] = true
	}
	missing := 0
	for _, id := range want {
		if !have[id] {
			missing++
		}
		delete(have, id)
	}
	if missing > 0 || len(have) > 0 {
		t.Errorf("%d committed rows missing from ClickHouse, %d ids there that should not be (rolled back or processed before the slot)", missing, len(have))
	}
	if st := o.StatusCounts(); len(st) != 1 || st["processed"] != int64(len(want)+len(preProcessed)) {
		t.Errorf("outbox statuses %v, want all %d processed", st, len(want)+len(preProcessed))
	}
	have = map[int64]bool{}
	for _, id := range o.CHIDs() {
		have[id] = true
	}
	// A PostgreSQL crash can hand a rolled-back transaction's ids out again
	// (its sequence advance was never flushed), so only ids absent from the
	// outbox count as rolled back; the set comparison above covers the rest.
	inOutbox := make(map[int64]bool, len(want))
	for _, id := range want {
		inOutbox[id] = true
	}
	for _, id := range rolledBack {
		if have[id] && !inOutbox[id] {
			t.Fatalf("rolled-back id %d reached ClickHouse", id)
		}
	}
	t.Logf("torture: %d steps, %d SIGKILLs, %d ClickHouse stops, %d PostgreSQL restarts, %d PostgreSQL failovers, %d daemons started, %d rows delivered (%d rolled back), %s",
		steps, kills, chStops, pgRestarts, failovers, n, len(want), len(rolledBack), time.Since(start).Round(time.Second))
}

// failoverSteps picks n distinct random steps of 1..steps for a failover,
// none of them a step with an event of its own (the big transaction, a
// ClickHouse stop, a PostgreSQL restart), so every planned event happens.
func failoverSteps(steps, n int) map[int]bool {
	at := map[int]bool{}
	for _, s := range rand.Perm(steps) {
		if len(at) == n {
			break
		}
		if step := s + 1; step != steps/3 && step%7 != 0 && step%11 != 0 {
			at[step] = true
		}
	}
	return at
}
