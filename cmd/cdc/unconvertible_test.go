package main

import (
	"context"
	"testing"

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

	runStopsAtStart(t, bin, withEnv(o.Env(), "CDC_HTTP_LISTEN=127.0.0.1:0"),
		[]string{"schema error", "`" + o.CHDB + "`.`events`", "tags Array(String)"})
	if counts := o.StatusCounts(); counts["failed"] != 0 || counts["processed"] != 0 {
		t.Errorf("outbox rows by status %v, want all 3 still pending", counts)
	}
}
