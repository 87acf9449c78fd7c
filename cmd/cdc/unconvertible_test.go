package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// A ClickHouse column of a name the outbox has, of a type the sink cannot
// convert to, stops `cdc run` at start with one message naming the table,
// the column and its type (issue 22), instead of every row being marked
// failed. The column is a producer's own (tags), so no fixed list of the
// outbox's columns knows it: the sink is told the outbox's columns.
func TestRunStopsOnUnconvertibleColumn(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	if _, err := o.PG.Exec(ctx, `ALTER TABLE event_outbox ADD COLUMN tags text[]`); err != nil {
		t.Fatal(err)
	}
	if err := o.CH.Exec(ctx, "ALTER TABLE `"+o.CHDB+"`.events ADD COLUMN tags Array(String)"); err != nil {
		t.Fatal(err)
	}
	o.MustInsert(3, true)

	out, code, took := runUntilExit(t, bin, withEnv(o.Env(), "CDC_HTTP_LISTEN=127.0.0.1:0"), 40*time.Second)
	if code <= 0 {
		t.Fatalf("exit code %d after %s, want non-zero within 30 s; output:\n%s", code, took, tail2(out, 15))
	}
	if took > 30*time.Second {
		t.Errorf("exited after %s, want within 30 s", took)
	}
	msg := lastLine(out)
	t.Logf("exit %d after %s: %s", code, took.Round(time.Millisecond), msg)
	for _, w := range []string{"schema error", "`" + o.CHDB + "`.`events`", "tags Array(String)"} {
		if !strings.Contains(msg, w) {
			t.Errorf("message lacks %q:\n%s", w, msg)
		}
	}
	if n := strings.Count(out, "session ended, restarting"); n > 0 {
		t.Errorf("retried %d times before giving up:\n%s", n, tail2(out, 15))
	}
	if counts := o.StatusCounts(); counts["failed"] != 0 || counts["processed"] != 0 {
		t.Errorf("outbox rows by status %v, want all 3 still pending", counts)
	}
}
