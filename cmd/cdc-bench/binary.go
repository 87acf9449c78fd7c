package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"slices"
	"time"
)

// binary compares pgoutput's text format with its binary format (option
// binary 'true', PostgreSQL 14+: the walsender calls each type's *_send
// instead of *_out) on the same outbox rows: the CPU the walsender spends
// per row (utime + stime of its process) and pg_recvlogical's rate. Every
// run reads its own slot, created before the rows are loaded, so all runs
// decode the same WAL; text and binary runs alternate, and the median of
// -binary-runs runs per mode is reported.
func (b *bench) binary(ctx context.Context) error {
	e, err := b.newEnv(ctx, "bin")
	if err != nil {
		return err
	}
	runs := max(b.cfg.binaryRuns, 1)
	modes := []struct {
		name string
		opts []string
	}{{"text", nil}, {"binary", []string{"binary=true"}}}
	for i := range runs {
		for _, m := range modes {
			if err := e.createSlot(ctx, fmt.Sprintf("%s_%s_%d", e.name, m.name, i)); err != nil {
				return err
			}
		}
	}
	log.Printf("loading %d rows in transactions of %d", b.cfg.rows, b.cfg.txnRows)
	if err := e.load(ctx, b.cfg.rows, b.cfg.txnRows); err != nil {
		return err
	}
	marker := fmt.Sprintf("cdc-bench-end-%d-%d", os.Getpid(), time.Now().UnixNano())
	if err := e.emitMarker(ctx, marker); err != nil {
		return err
	}
	if _, err := e.pg.Exec(ctx, "CHECKPOINT"); err != nil {
		return err
	}
	res := &b.res.Binary
	res.Rows = b.cfg.rows
	for i := range runs {
		for _, m := range modes {
			e.quiesce(ctx)
			slot := fmt.Sprintf("%s_%s_%d", e.name, m.name, i)
			rr, err := b.runRecvlogical(ctx, e, slot, marker, 10*time.Minute, m.opts...)
			if err != nil {
				return fmt.Errorf("pg_recvlogical %s: %w", m.name, err)
			}
			run := binaryRun{Mode: m.name, Sec: round(rr.took.Seconds(), 3),
				Rate:              round(float64(b.cfg.rows)/rr.took.Seconds(), 0),
				WalsenderUsPerRow: round(rr.walsenderCPU*1e6/float64(b.cfg.rows), 2), Bytes: rr.bytes}
			log.Printf("pg_recvlogical %s: %s, %s rows/s, walsender %.2f µs/row, %d bytes", m.name, rr.took.Round(time.Millisecond), num(run.Rate), run.WalsenderUsPerRow, rr.bytes)
			res.Runs = append(res.Runs, run)
		}
	}
	res.TextUsPerRow, res.TextRate = medianOf(res.Runs, "text")
	res.BinaryUsPerRow, res.BinaryRate = medianOf(res.Runs, "binary")
	return nil
}

// medianOf returns the median walsender CPU per row and rate of the runs
// of one mode.
func medianOf(runs []binaryRun, mode string) (usPerRow, rate float64) {
	var cpu, rates []float64
	for _, r := range runs {
		if r.Mode == mode {
			cpu, rates = append(cpu, r.WalsenderUsPerRow), append(rates, r.Rate)
		}
	}
	if len(cpu) == 0 {
		return 0, 0
	}
	slices.Sort(cpu)
	slices.Sort(rates)
	return cpu[len(cpu)/2], rates[len(rates)/2]
}

type binaryResult struct {
	Rows           int         `json:"rows"`
	TextUsPerRow   float64     `json:"text_walsender_cpu_us_per_row"`
	BinaryUsPerRow float64     `json:"binary_walsender_cpu_us_per_row"`
	TextRate       float64     `json:"text_rows_per_sec"`
	BinaryRate     float64     `json:"binary_rows_per_sec"`
	Runs           []binaryRun `json:"runs"`
}

type binaryRun struct {
	Mode              string  `json:"mode"`
	Sec               float64 `json:"sec"`
	Rate              float64 `json:"rows_per_sec"`
	WalsenderUsPerRow float64 `json:"walsender_cpu_us_per_row"`
	Bytes             int64   `json:"bytes_written"`
}
