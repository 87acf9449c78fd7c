package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// Commit → visible latency under a steady offered load.
//
// A producer commits a transaction of txnRows rows every txnRows/rate
// seconds (50 rows every 10 ms for 5,000 rows/s) on a fixed schedule and
// records, per transaction, its ids and the time it sent the committing
// statement. A poller asks ClickHouse for max(id) every poll interval and
// records when each value was first seen. One producer commits ids in
// increasing order and cdc delivers in commit order, so the rows visible in
// ClickHouse are always a prefix of the ids (checked at the end: count() and
// uniqExact(id) equal the rows committed): a transaction is visible at the
// first poll whose max(id) covers its last id. ClickHouse 18's DateTime
// (_inserted_at) has one-second resolution, too coarse for this.
//
// The producer commits with synchronous_commit = on (the server's default;
// the test server turns it off), so a commit's WAL is flushed, and visible to
// the walsender, when the commit returns.
//
// Error bounds: the commit time is taken before the statement is sent (an
// over-estimate by the commit's own duration) and the visible time when the
// poll's answer arrives (an over-estimate of up to one poll interval plus
// the query): the percentiles are upper bounds.

type latencyResult struct {
	Rows        int     `json:"rows"`
	Txns        int     `json:"transactions"`
	OfferedRate float64 `json:"offered_rows_per_sec"`
	P50ms       float64 `json:"p50_ms"`
	P90ms       float64 `json:"p90_ms"`
	P99ms       float64 `json:"p99_ms"`
	Maxms       float64 `json:"max_ms"`
	PollMs      float64 `json:"poll_interval_ms"`
	Late        int     `json:"producer_late_txns"` // transactions started more than one interval behind schedule
}

type sentTxn struct {
	maxID int64
	rows  int
	at    time.Time
}

type seen struct {
	maxID int64
	at    time.Time
}

func (e *env) runLatency(ctx context.Context, rate, txnRows int, duration time.Duration) (latencyResult, error) {
	var res latencyResult
	interval := time.Duration(float64(time.Second) * float64(txnRows) / float64(rate))
	conn, err := e.pg.Acquire(ctx)
	if err != nil {
		return res, err
	}
	defer conn.Release()
	// The test server runs with synchronous_commit = off, which leaves a
	// commit's WAL unflushed for up to wal_writer_delay (200 ms), and the
	// walsender sends only flushed WAL. An application commits durably
	// (the PostgreSQL default): so does the producer.
	if _, err := conn.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		return res, err
	}
	defer conn.Exec(context.Background(), "RESET synchronous_commit")

	pctx, stopPoll := context.WithCancel(ctx)
	var (
		mu    sync.Mutex
		seens []seen
		perr  error
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(e.b.cfg.poll)
		defer tick.Stop()
		var last int64
		for {
			var maxID int64
			if err := e.ch.QueryRow(pctx, "SELECT max(id) FROM events").Scan(&maxID); err != nil {
				if pctx.Err() == nil {
					mu.Lock()
					perr = err
					mu.Unlock()
				}
				return
			}
			if maxID > last {
				now := time.Now()
				mu.Lock()
				seens = append(seens, seen{maxID, now})
				mu.Unlock()
				last = maxID
			}
			select {
			case <-tick.C:
			case <-pctx.Done():
				return
			}
		}
	}()

	var txns []sentTxn
	start := time.Now()
	var next int64
	for k := 0; ; k++ {
		due := start.Add(time.Duration(k) * interval)
		if due.Sub(start) >= duration {
			break
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		} else if -d > interval {
			res.Late++
		}
		at := time.Now()
		rows, err := conn.Query(ctx, rowSQL+" RETURNING id", next, int64(txnRows))
		if err != nil {
			stopPoll()
			wg.Wait()
			return res, err
		}
		var maxID int64
		n := 0
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				stopPoll()
				wg.Wait()
				return res, err
			}
			maxID = max(maxID, id)
			n++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			stopPoll()
			wg.Wait()
			return res, err
		}
		next += int64(n)
		txns = append(txns, sentTxn{maxID: maxID, rows: n, at: at})
	}
	elapsed := time.Since(start)
	last := txns[len(txns)-1].maxID
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		done := len(seens) > 0 && seens[len(seens)-1].maxID >= last
		err := perr
		mu.Unlock()
		if done || err != nil {
			break
		}
		if time.Now().After(deadline) {
			stopPoll()
			wg.Wait()
			return res, fmt.Errorf("latency: rows not visible after 2m")
		}
		time.Sleep(e.b.cfg.poll)
	}
	stopPoll()
	wg.Wait()
	if perr != nil {
		return res, perr
	}

	// Latency of every row: its transaction's first sighting.
	lat := make([]float64, 0, int(next))
	j := 0
	for _, t := range txns {
		for j < len(seens) && seens[j].maxID < t.maxID {
			j++
		}
		ms := float64(seens[j].at.Sub(t.at)) / float64(time.Millisecond)
		for i := 0; i < t.rows; i++ {
			lat = append(lat, ms)
		}
		res.Rows += t.rows
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(lat)))) - 1
		return math.Round(lat[max(i, 0)]*10) / 10
	}
	res.Txns = len(txns)
	res.OfferedRate = math.Round(float64(res.Rows) / elapsed.Seconds())
	res.P50ms, res.P90ms, res.P99ms, res.Maxms = pct(0.50), pct(0.90), pct(0.99), pct(1)
	res.PollMs = float64(e.b.cfg.poll) / float64(time.Millisecond)
	return res, nil
}
