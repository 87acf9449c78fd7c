package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/verify"
)

// runCdc runs one cdc subcommand to its end and returns its stdout and
// exit code.
func runCdc(t *testing.T, bin string, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		t.Logf("cdc %s: exit %d; stderr: %s", strings.Join(args, " "), ee.ExitCode(), lastLines(stderr.String(), 5))
		return stdout.String(), ee.ExitCode()
	case err != nil:
		t.Fatalf("cdc %s: %v; stderr: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), 0
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func verifyJSON(t *testing.T, bin string, env []string, args ...string) (*verify.Report, int) {
	t.Helper()
	out, code := runCdc(t, bin, env, append([]string{"verify", "--json"}, args...)...)
	var r verify.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("cdc verify --json printed %q: %v", out, err)
	}
	return &r, code
}

// chDeleteIDs runs ALTER TABLE ... DELETE and waits for the mutation.
func chDeleteIDs(t *testing.T, o *testenv.Outbox, where string) {
	t.Helper()
	ctx := context.Background()
	if err := o.CH.Exec(ctx, fmt.Sprintf("ALTER TABLE `%s`.events DELETE WHERE %s", o.CHDB, where)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the DELETE mutation", 60*time.Second, func() bool {
		var n uint64
		if err := o.CH.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM `%s`.events WHERE %s", o.CHDB, where)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
}

func idList(ids []int64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	return strings.Join(s, ",")
}

// Issue 19's "done when": 50k rows through cdc run; rows deleted in
// ClickHouse and a few stored twice; verify reports exactly those (exit 5);
// replay restores the missing ones while cdc run streams new rows; verify
// then reports only the doubled ones; a replay killed midway and run again
// inserts nothing twice.
func TestVerifyAndReplay(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	env := withListen(o.Env(), testenv.FreePort(t))
	daemon := startDaemon(t, bin, append(env, "CDC_BATCH_SIZE=5000"), t.TempDir(), "run")

	// 1. 50k rows through cdc run.
	var ids []int64
	for range 10 {
		ids = append(ids, o.MustInsert(5000, true)...)
	}
	o.WaitCH(50000, 90*time.Second)
	waitUntil(t, "all processed", 30*time.Second, func() bool { return o.StatusCounts()["processed"] == 50000 })
	if r, code := verifyJSON(t, bin, env); code != 0 || !r.Clean() || r.Rows != 50000 {
		t.Fatalf("verify before any damage: exit %d, %+v", code, r)
	}

	// 2. Lost rows: a scattered few and a block (a dropped part); a few
	// stored twice.
	var lost []int64
	for i := 17; i < len(ids); i += 997 {
		lost = append(lost, ids[i])
	}
	block := ids[30000:31000]
	chDeleteIDs(t, o, fmt.Sprintf("id IN (%s) OR (id >= %d AND id <= %d)", idList(lost), block[0], block[len(block)-1]))
	lost = append(lost, block...)
	slices.Sort(lost)
	lost = slices.Compact(lost)
	doubled := []int64{ids[5], ids[25000], ids[49999]}
	if err := o.CH.Exec(ctx, fmt.Sprintf("INSERT INTO `%[1]s`.events SELECT * FROM `%[1]s`.events WHERE id IN (%[2]s)", o.CHDB, idList(doubled))); err != nil {
		t.Fatal(err)
	}

	// 3. verify reports exactly those, exit 5.
	r, code := verifyJSON(t, bin, env)
	if code != 5 {
		t.Errorf("verify exit %d, want 5", code)
	}
	if r.Missing.Count != int64(len(lost)) || !slices.Equal(r.Missing.Sample, lost[:100]) {
		t.Errorf("missing = %d %v…, want %d %v…", r.Missing.Count, r.Missing.Sample[:min(5, len(r.Missing.Sample))], len(lost), lost[:5])
	}
	if r.Duplicated.Count != 3 || !slices.Equal(r.Duplicated.Sample, doubled) {
		t.Errorf("duplicated = %+v, want %v", r.Duplicated, doubled)
	}
	if r.NotInOutbox.Count != 0 {
		t.Errorf("not_in_outbox = %+v, want none", r.NotInOutbox)
	}
	// The human form says the same.
	if out, code := runCdc(t, bin, env, "verify"); code != 5 || !strings.Contains(out, fmt.Sprintf("missing:       %d", len(lost))) {
		t.Errorf("cdc verify: exit %d, output %q", code, out)
	}
	if out, code := runCdc(t, bin, env, "replay", "--dry-run", "--from-id", fmt.Sprint(ids[0]), "--to-id", fmt.Sprint(ids[len(ids)-1])); code != 0 ||
		!strings.Contains(out, fmt.Sprintf("found %d missing rows", len(lost))) {
		t.Errorf("replay --dry-run: exit %d, output %q", code, out)
	}

	// 4. replay restores them while cdc run streams new rows.
	pctx, stopProducing := context.WithCancel(ctx)
	produced := make(chan *testenv.Producer, 1)
	go func() {
		p, err := o.Produce(pctx, 50, 5*time.Millisecond)
		if err != nil {
			t.Error(err)
		}
		produced <- p
	}()
	rangeArgs := []string{"--from-id", fmt.Sprint(ids[0]), "--to-id", fmt.Sprint(ids[len(ids)-1])}
	out, code := runCdc(t, bin, env, append([]string{"replay"}, rangeArgs...)...)
	want := fmt.Sprintf("replay: found %d missing rows, inserted %d, already present 0", len(lost), len(lost))
	if code != 0 || !strings.Contains(out, want) {
		t.Errorf("replay: exit %d, output %q, want %q", code, out, want)
	}
	stopProducing()
	p := <-produced
	if len(p.Committed) == 0 {
		t.Error("no rows were produced while replay ran")
	}
	o.WaitCH(uint64(50000+len(doubled)+len(p.Committed)), 60*time.Second)
	waitUntil(t, "new rows processed", 30*time.Second, func() bool {
		return o.StatusCounts()["processed"] == int64(50000+len(p.Committed))
	})

	// 5. verify reports only the doubled ones.
	r, code = verifyJSON(t, bin, env)
	if code != 5 || r.Missing.Count != 0 || !slices.Equal(r.Duplicated.Sample, doubled) || r.NotInOutbox.Count != 0 {
		t.Errorf("verify after replay: exit %d, %+v", code, r)
	}
	if r.Rows != int64(50000+len(p.Committed)) {
		t.Errorf("verify after replay compared %d rows, want %d", r.Rows, 50000+len(p.Committed))
	}

	// 6. A replay killed midway and run again inserts nothing twice.
	big := ids[5000:25000]
	chDeleteIDs(t, o, fmt.Sprintf("id >= %d AND id <= %d", big[0], big[len(big)-1]))
	before, _ := o.CHCount()
	// Batches of 50 that do not grow (batch.max_rows): many inserts, so the
	// kill lands mid-replay.
	slow := append(append([]string{}, env...), "CDC_BATCH_SIZE=50", "CDC_BATCH_MAX_ROWS=50", "CDC_BATCH_FLUSH_INTERVAL=1h")
	cmd := exec.Command(bin, append([]string{"replay"}, rangeArgs...)...)
	cmd.Env = append(os.Environ(), slow...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitUntil(t, "replay under way", 60*time.Second, func() bool { n, _ := o.CHCount(); return n >= before+1000 })
	cmd.Process.Signal(syscall.SIGKILL)
	if err := <-exited; err == nil {
		t.Fatal("replay finished before it was killed; the kill did not land mid-run")
	}
	mid, _ := o.CHCount()
	if mid >= before+uint64(len(big)) {
		t.Fatalf("replay had restored all %d rows before the kill", len(big))
	}
	t.Logf("killed replay after it restored %d of %d rows", mid-before, len(big))
	out, code = runCdc(t, bin, env, append([]string{"replay"}, rangeArgs...)...)
	var found, inserted, present uint64
	if _, err := fmt.Sscanf(strings.TrimSpace(out), "replay: found %d missing rows, inserted %d, already present %d", &found, &inserted, &present); err != nil || code != 0 {
		t.Fatalf("replay after the kill: exit %d, output %q: %v", code, out, err)
	}
	// An insert the kill interrupted may still have landed after mid was
	// read: at most the rest is inserted, and every row found is accounted.
	if inserted == 0 || inserted > before+uint64(len(big))-mid || found != inserted+present {
		t.Errorf("replay after the kill: found %d, inserted %d, already present %d; %d rows were left to restore", found, inserted, present, before+uint64(len(big))-mid)
	}
	r, code = verifyJSON(t, bin, env)
	if code != 5 || r.Missing.Count != 0 || !slices.Equal(r.Duplicated.Sample, doubled) {
		t.Errorf("verify after the killed replay and its re-run: exit %d, %+v", code, r)
	}
	count, uniq := o.CHCount()
	if count != uniq+uint64(len(doubled)) || uniq != uint64(50000+len(p.Committed)) {
		t.Errorf("ClickHouse count()=%d uniqExact(id)=%d, want %d unique and the %d doubled", count, uniq, 50000+len(p.Committed), len(doubled))
	}
	if code := daemon.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("cdc run exited %d", code)
	}
}
