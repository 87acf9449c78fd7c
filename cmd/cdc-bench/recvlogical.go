package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// The pg_recvlogical ceiling: the walsender decoding the same WAL through
// the same publication with pgoutput, and a client that does nothing with
// what it receives. Its slot is created before the rows are loaded, so it
// reads exactly the WAL cdc reads.
//
// When it is done is known precisely: after the rows, the benchmark commits
// a transactional logical message carrying a random marker; pg_recvlogical
// (messages 'true') writes it to its stdout, a pipe the benchmark scans. The
// time from starting the process (connection and all, like cdc's) to the
// marker is the time to decode and ship every row.

func findRecvlogical(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	var dirs []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	if d := os.Getenv("CDC_TEST_PGBIN"); d != "" {
		dirs = append(dirs, d)
	}
	dirs = append(dirs, "/usr/lib/postgresql/15/bin")
	for _, d := range dirs {
		p := filepath.Join(d, "pg_recvlogical")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("pg_recvlogical"); err == nil {
		return p, nil
	}
	return "", errors.New("pg_recvlogical not found (pg_config --bindir, CDC_TEST_PGBIN, /usr/lib/postgresql/15/bin, PATH); set -recvlogical")
}

func (e *env) recvSlot() string { return e.name + "_recvlogical" }

func (e *env) createRecvSlot(ctx context.Context) error { return e.createSlot(ctx, e.recvSlot()) }

func (e *env) createSlot(ctx context.Context, slot string) error {
	_, err := e.pg.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	return err
}

// recvRun is one pg_recvlogical run to the marker.
type recvRun struct {
	took  time.Duration
	bytes int64
	// walsenderCPU is the CPU time (utime + stime, /proc/<pid>/stat) of the
	// walsender that served the run, read just before it ends.
	walsenderCPU float64
}

// emitMarker commits a logical decoding message after the rows.
func (e *env) emitMarker(ctx context.Context, marker string) error {
	_, err := e.pg.Exec(ctx, `SELECT pg_logical_emit_message(true, 'cdc-bench', $1)`, marker)
	return err
}

// runRecvlogical streams slot until the marker arrives; opts are extra
// pgoutput options (e.g. binary=true).
func (b *bench) runRecvlogical(ctx context.Context, e *env, slot, marker string, timeout time.Duration, opts ...string) (recvRun, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := []string{"-d", e.pgURL, "--slot", slot, "--start",
		"--plugin", "pgoutput",
		"-o", "proto_version=1", "-o", "publication_names=cdc_outbox", "-o", "messages=true",
		"-s", "10", "-F", "0",
		"-f", "-"}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	cmd := exec.CommandContext(ctx, b.cfg.recvlogical, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return recvRun{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return recvRun{}, err
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	walsender := e.watchWalsender(ctx, slot)
	took, n, err := readToMarker(ctx, out, []byte(marker), &stderr, start)
	r := recvRun{took: took, bytes: n}
	if pid := walsender.Load(); pid > 0 {
		r.walsenderCPU = procTicks(int(pid), false)
	}
	return r, err
}

// watchWalsender finds the pid of the walsender serving slot (polling
// pg_replication_slots until it is active) and returns it once known.
func (e *env) watchWalsender(ctx context.Context, slot string) *atomic.Int64 {
	var pid atomic.Int64
	go func() {
		for ctx.Err() == nil {
			var p *int32
			if err := e.pg.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&p); err == nil && p != nil {
				pid.Store(int64(*p))
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return &pid
}

// readToMarker reads out until the marker appears and returns the time since
// start and the bytes read.
func readToMarker(ctx context.Context, out io.Reader, want []byte, stderr *bytes.Buffer, start time.Time) (time.Duration, int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	keep := 0 // bytes of the previous read kept so a marker split across reads is found
	for {
		n, err := out.Read(buf[keep:])
		total += int64(n)
		if n > 0 {
			if bytes.Contains(buf[:keep+n], want) {
				return time.Since(start), total, nil
			}
			k := min(len(want)-1, keep+n)
			copy(buf, buf[keep+n-k:keep+n])
			keep = k
		}
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return 0, total, fmt.Errorf("pg_recvlogical ended before the marker (%v): %s", ctx.Err(), strings.TrimSpace(stderr.String()))
			}
			return 0, total, err
		}
	}
}
