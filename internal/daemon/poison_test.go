package daemon

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// A row ClickHouse rejects must be isolated, marked failed with the error,
// counted, and must not stop the stream; retry-failed re-sends it exactly
// once when the cause is fixed.
func TestPoisonRowsAreIsolatedAndRedriven(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	addPoisonGuard(t, o)
	cfg := o.Config()
	cfg.Batch.Size = 1000
	r := start(t, cfg)
	r.waitStreaming(t)

	good := o.MustInsert(100, true)
	var poison, outOfRange []int64
	for _, q := range []struct {
		sql string
		ids *[]int64
	}{
		{`INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version) VALUES ('poison', now(), 'test', '{}', 1), ('poison', now(), 'test', '{}', 1) RETURNING id`, &poison},
		// DateTime on ClickHouse 18 cannot hold 1950: rejected by conversion.
		{`INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version) VALUES ('old', '1950-01-01', 'test', '{}', 1) RETURNING id`, &outOfRange},
	} {
		rows, err := o.PG.Query(ctx, q.sql)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			*q.ids = append(*q.ids, id)
		}
	}
	more := o.MustInsert(50, true)
	good = append(good, more...)

	waitFor(t, "poison rows marked failed", 60*time.Second, func() bool {
		c := o.StatusCounts()
		return c["failed"] == 3 && c["processed"] == int64(len(good))
	})
	n, uniq := o.CHCount()
	if n != uint64(len(good)) || uniq != n {
		t.Fatalf("ClickHouse count %d uniq %d, want %d", n, uniq, len(good))
	}
	var lastError string
	var attempts int
	if err := o.PG.QueryRow(ctx, `SELECT last_error, attempts FROM event_outbox WHERE id = $1`, poison[0]).Scan(&lastError, &attempts); err != nil {
		t.Fatal(err)
	}
	if attempts != 1 || lastError == "" {
		t.Errorf("poison row: attempts %d, last_error %q; want 1 and the ClickHouse error", attempts, lastError)
	}
	if got := testutil.ToFloat64(r.m.RowsFailed); got != 3 {
		t.Errorf("cdc_rows_failed_total = %v, want 3", got)
	}

	// The stream goes on past the poison rows.
	after := o.MustInsert(10, true)
	good = append(good, after...)
	o.WaitCH(uint64(len(good)), 30*time.Second)
	if err := r.shutdown(t); err != nil {
		t.Fatal(err)
	}

	// Fix the cause of the server-side rejection; the 1950 row still fails.
	if err := o.CH.Exec(ctx, fmt.Sprintf("ALTER TABLE `%s`.events DROP COLUMN _guard", o.CHDB)); err != nil {
		t.Fatal(err)
	}
	// As if an earlier re-drive died after inserting poison[0] but before
	// marking it: the id check must keep it single.
	batch, err := o.CH.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO `%s`.events (id, event_type, event_date_time, environment, event_context, metadata_version, created_at, _lsn, _seq)", o.CHDB))
	if err != nil {
		t.Fatal(err)
	}
	if err := batch.Append(poison[0], "poison", time.Now(), "test", "{}", int64(1), time.Now(), uint64(0), uint64(poison[0])); err != nil {
		t.Fatal(err)
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 2; round++ {
		res, err := retryFailed(o, 0)
		if err != nil {
			t.Fatalf("retry-failed round %d: %v", round, err)
		}
		wantRead, wantStill := int64(3), int64(1)
		if round == 2 {
			wantRead = 1
		}
		if res.Read != wantRead || res.StillFailed != wantStill {
			t.Errorf("round %d: read %d, still failed %d; want %d and %d", round, res.Read, res.StillFailed, wantRead, wantStill)
		}
	}
	o.AssertExactlyOnceAllowFailed(append(good, poison...), outOfRange)
	if err := o.PG.QueryRow(ctx, `SELECT attempts FROM event_outbox WHERE id = $1`, outOfRange[0]).Scan(&attempts); err != nil {
		t.Fatal(err)
	}
	if attempts != 3 {
		t.Errorf("out-of-range row attempts = %d, want 3 (stream + two re-drives)", attempts)
	}
	// A maximum number of attempts stops further re-drives.
	res, err := retryFailed(o, 3)
	if err != nil || res.Read != 0 {
		t.Errorf("retry with max attempts 3: read %d, err %v; want 0 rows", res.Read, err)
	}
}
