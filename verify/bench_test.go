package verify

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// BenchmarkVerify compares an outbox of CDC_VERIFY_BENCH_ROWS processed rows
// (default 2,000,000; about 300 bytes each, as the stream delivers them)
// with a ClickHouse table that matches it, and reports rows compared per
// second (DESIGN.md §6: at least 1,000,000). Loading takes longer than the
// comparison; run it on its own:
//
//	CDC_VERIFY_BENCH_ROWS=2000000 go test -run '^$' -bench BenchmarkVerify -benchtime 3x ./verify/
func BenchmarkVerify(b *testing.B) {
	rows := 2_000_000
	if s := os.Getenv("CDC_VERIFY_BENCH_ROWS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatalf("CDC_VERIFY_BENCH_ROWS: %v", err)
		}
		rows = n
	}
	o := testenv.NewOutbox(b)
	ctx := context.Background()
	start := time.Now()
	for done := 0; done < rows; done += 500_000 {
		n := min(500_000, rows-done)
		if _, err := o.PG.Exec(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version, status)
		  SELECT 'order.created', now(), 'bench', jsonb_build_object('n', g, 'note', repeat('x', 150)), g, 'processed'
		  FROM generate_series(1, $1) g`, n); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := o.PG.Exec(ctx, `VACUUM ANALYZE event_outbox`); err != nil {
		b.Fatal(err)
	}
	// As the daemon's pool (daemon.OpenPool) runs: without JIT.
	var db string
	if err := o.PG.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		b.Fatal(err)
	}
	if _, err := o.PG.Exec(ctx, fmt.Sprintf(`ALTER DATABASE %q SET jit = off`, db)); err != nil {
		b.Fatal(err)
	}
	o.PG.Reset()
	if err := o.CH.Exec(ctx, fmt.Sprintf(`INSERT INTO %[1]s.events (id, event_type, event_date_time, environment, event_context, metadata_version, created_at, _lsn, _seq, _fingerprint)
	  SELECT number + 1, 'order.created', now(), 'bench', concat('{"n": ', toString(number + 1), '}'), number + 1, now(), 1, number, cityHash64(number) + 1
	  FROM system.numbers LIMIT %[2]d`, chclient.QuoteIdent(o.CHDB), rows)); err != nil {
		b.Fatal(err)
	}
	b.Logf("loaded %d rows on each side in %s", rows, time.Since(start).Round(time.Second))
	opts := Options{Table: "public.event_outbox", Database: o.CHDB, ClickHouseTable: "events", FromID: math.MinInt64, ToID: math.MaxInt64}
	b.ResetTimer()
	var total time.Duration
	for b.Loop() {
		t0 := time.Now()
		r, err := Run(ctx, o.PG, o.CH, opts)
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(t0)
		if !r.Clean() || r.Rows != int64(rows) || r.BucketsDiffering != 0 {
			b.Fatalf("a matching table: %+v", r)
		}
	}
	b.ReportMetric(float64(rows)*float64(b.N)/total.Seconds(), "rows/s")
	b.ReportMetric(0, "ns/op")
}
