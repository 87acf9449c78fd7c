package main

import (
	"context"
	"fmt"
	"time"
)

// The baseline: the seed's Celery task (select pending/failed rows in
// batches of 1000, send them to ClickHouse in one INSERT, mark them
// processed) run as a tight loop, with no beat interval between runs: its
// best case. One worker, like one beat schedule. Each round is one
// PostgreSQL transaction holding the row locks across the ClickHouse insert,
// as the seed's worker does.

const pollSelect = `SELECT id, event_type, event_date_time, environment, event_context::text, metadata_version, created_at
FROM event_outbox WHERE status IN ('pending', 'failed') ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`

const pollUpdate = `UPDATE event_outbox SET status = 'processed', updated_at = now() WHERE id = ANY($1)`

// runPolling drains the outbox and returns the rows moved and the time.
func (e *env) runPolling(ctx context.Context, batch int) (int, time.Duration, error) {
	conn, err := e.pg.Acquire(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Release()
	insert := "INSERT INTO events (id, event_type, event_date_time, environment, event_context, metadata_version, created_at, _lsn, _seq)"
	var (
		ids       = make([]int64, 0, batch)
		eventType string
		evTime    time.Time
		envName   string
		payload   string
		version   int64
		created   time.Time
	)
	total := 0
	start := time.Now()
	for {
		n, err := func() (int, error) {
			tx, err := conn.Begin(ctx)
			if err != nil {
				return 0, err
			}
			defer tx.Rollback(ctx)
			rows, err := tx.Query(ctx, pollSelect, batch)
			if err != nil {
				return 0, err
			}
			chb, err := e.ch.PrepareBatch(ctx, insert)
			if err != nil {
				rows.Close()
				return 0, err
			}
			defer chb.Close()
			ids = ids[:0]
			for rows.Next() {
				var id int64
				if err := rows.Scan(&id, &eventType, &evTime, &envName, &payload, &version, &created); err != nil {
					rows.Close()
					return 0, err
				}
				if err := chb.Append(id, eventType, evTime, envName, payload, version, created, uint64(0), uint64(id)); err != nil {
					rows.Close()
					return 0, err
				}
				ids = append(ids, id)
			}
			if err := rows.Err(); err != nil {
				return 0, err
			}
			if len(ids) == 0 {
				return 0, nil
			}
			if err := chb.Send(); err != nil {
				return 0, fmt.Errorf("clickhouse insert: %w", err)
			}
			if _, err := tx.Exec(ctx, pollUpdate, ids); err != nil {
				return 0, err
			}
			return len(ids), tx.Commit(ctx)
		}()
		if err != nil {
			return total, 0, fmt.Errorf("polling round: %w", err)
		}
		if n == 0 {
			return total, time.Since(start), nil
		}
		total += n
	}
}
