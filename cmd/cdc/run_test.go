package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// waitUntil is testenv.WaitFor, under the name this package's tests use.
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, timeout, cond)
}

func httpGet(url string) (int, string) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func withListen(env []string, port int) []string {
	return append(append([]string{}, env...), fmt.Sprintf("CDC_HTTP_LISTEN=127.0.0.1:%d", port))
}

func logContains(path, s string) bool {
	b, _ := os.ReadFile(path)
	return strings.Contains(string(b), s)
}

// A second daemon on the same slot waits as a hot standby (not ready, says
// who leads) and takes over when the leader dies.
func TestStandbyTakesOverWhenLeaderDies(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	dir := t.TempDir()
	pa, pb := testenv.FreePort(t), testenv.FreePort(t)
	a := startDaemon(t, bin, withListen(o.Env(), pa), dir, "a")
	waitUntil(t, "a ready", 30*time.Second, func() bool { c, _ := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", pa)); return c == 200 })
	b := startDaemon(t, bin, withListen(o.Env(), pb), dir, "b")
	waitUntil(t, "b standing by", 30*time.Second, func() bool { return logContains(b.log, "standby: another instance leads this slot") })
	if code, body := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", pb)); code != 503 {
		t.Errorf("standby /readyz = %d %q, want 503", code, body)
	}
	if code, _ := httpGet(fmt.Sprintf("http://127.0.0.1:%d/healthz", pb)); code != 200 {
		t.Errorf("standby /healthz = %d, want 200", code)
	}
	first := o.MustInsert(100, true)
	o.WaitCH(100, 30*time.Second)

	a.kill()
	waitUntil(t, "b ready", 60*time.Second, func() bool { c, _ := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", pb)); return c == 200 })
	second := o.MustInsert(100, true)
	o.WaitCH(200, 30*time.Second)
	if code := b.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("b exited %d after SIGTERM", code)
	}
	o.AssertExactlyOnce(append(first, second...), nil)
}

// SIGTERM and SIGINT: stop reading, flush, mark, confirm, exit 0.
func TestSignalsFlushAndExitZero(t *testing.T) {
	bin := cdcBinary(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			o := testenv.NewOutbox(t)
			port := testenv.FreePort(t)
			// Only the shutdown can flush: the batch never fills and the
			// timer is an hour.
			env := append(withListen(o.Env(), port), "CDC_BATCH_FLUSH_INTERVAL=1h")
			p := startDaemon(t, bin, env, t.TempDir(), "cdc")
			waitUntil(t, "ready", 30*time.Second, func() bool { c, _ := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", port)); return c == 200 })
			var before string
			if err := o.PG.QueryRow(context.Background(), `SELECT pg_current_wal_insert_lsn()::text`).Scan(&before); err != nil {
				t.Fatal(err)
			}
			ids := o.MustInsert(250, true)
			waitUntil(t, "rows buffered", 30*time.Second, func() bool {
				_, body := httpGet(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
				return strings.Contains(body, "cdc_buffer_rows 250")
			})
			if n, _ := o.CHCount(); n != 0 {
				t.Fatalf("%d rows in ClickHouse before the signal", n)
			}
			p.cmd.Process.Signal(sig)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				t.Fatal("no exit within 30s")
			}
			if code := p.cmd.ProcessState.ExitCode(); code != 0 {
				t.Fatalf("exit code %d, want 0", code)
			}
			o.AssertExactlyOnce(ids, nil)
			// The transaction is confirmed: the slot is past it. The
			// walsender applies the last status update when it reads it,
			// which can be after cdc exited: look once it let go of the slot.
			waitUntil(t, "walsender gone", 10*time.Second, func() bool {
				var active bool
				err := o.PG.QueryRow(context.Background(), `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, o.Slot).Scan(&active)
				return err == nil && !active
			})
			var confirmedPast bool
			if err := o.PG.QueryRow(context.Background(),
				`SELECT confirmed_flush_lsn > $1::pg_lsn FROM pg_replication_slots WHERE slot_name = $2`, before, o.Slot).Scan(&confirmedPast); err != nil {
				t.Fatal(err)
			}
			if !confirmedPast {
				t.Error("slot's confirmed_flush_lsn did not move past the flushed transaction")
			}
		})
	}
}

// With ClickHouse down, a stop cannot deliver: after shutdown.grace the
// daemon gives up with a non-zero exit, confirming nothing it did not
// deliver; the next run delivers it.
func TestShutdownGraceExpires(t *testing.T) {
	bin := cdcBinary(t)
	srv := testenv.StartPrivate(t, "grace")
	env := []string{"CDC_POSTGRES_URL=" + srv.PGURL, "CDC_CLICKHOUSE_ADDR=" + srv.CHAddr, "CDC_CLICKHOUSE_DATABASE=grace",
		"CDC_SHUTDOWN_GRACE=2s", "CDC_RETRY_MAX_BACKOFF=500ms", "CDC_LOG_FORMAT=json", "CDC_BATCH_FLUSH_INTERVAL=50ms"}
	migrate(t, bin, env)
	o := testenv.OpenOutbox(t, srv.PGURL, srv.CHAddr, "grace")
	port := testenv.FreePort(t)
	p := startDaemon(t, bin, withListen(env, port), t.TempDir(), "cdc")
	waitUntil(t, "ready", 30*time.Second, func() bool { c, _ := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", port)); return c == 200 })
	srv.Script(t, "ch-stop")
	ids := o.MustInsert(20, true)
	waitUntil(t, "insert failing", 30*time.Second, func() bool { return logContains(p.log, "clickhouse insert") })
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("exit took %s with a 2s grace", took)
	}
	if code := p.cmd.ProcessState.ExitCode(); code == 0 {
		t.Error("exit code 0 although rows were not delivered")
	}
	srv.Script(t, "ch-start")
	p2 := startDaemon(t, bin, withListen(env, port), t.TempDir(), "cdc2")
	o.WaitCH(20, 60*time.Second)
	if code := p2.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("second run exited %d", code)
	}
	o.AssertExactlyOnce(ids, nil)
}

func migrate(t *testing.T, bin string, env []string) {
	t.Helper()
	cmd := exec.Command(bin, "migrate")
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cdc migrate: %v\n%s", err, out)
	}
}
