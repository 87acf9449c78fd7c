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

func (e *env) createRecvSlot(ctx context.Context) error {
	_, err := e.pg.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, e.recvSlot())
	return err
}

// emitMarker commits a logical decoding message after the rows.
func (e *env) emitMarker(ctx context.Context, marker string) error {
	_, err := e.pg.Exec(ctx, `SELECT pg_logical_emit_message(true, 'cdc-bench', $1)`, marker)
	return err
}

// runRecvlogical streams the slot until the marker arrives and returns the
// elapsed time and the bytes it wrote.
func (b *bench) runRecvlogical(ctx context.Context, e *env, marker string, timeout time.Duration) (time.Duration, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.cfg.recvlogical,
		"-d", e.pgURL, "--slot", e.recvSlot(), "--start",
		"--plugin", "pgoutput",
		"-o", "proto_version=1", "-o", "publication_names=cdc_outbox", "-o", "messages=true",
		"-s", "10", "-F", "0",
		"-f", "-")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	want := []byte(marker)
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
