package sink

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// awaitInflightInserts waits until ClickHouse runs no INSERT into the table.
//
// ClickHouse has no transactions: an INSERT whose client died (a killed
// predecessor, or our own attempt whose connection dropped) keeps running
// on the server and may still add its rows after we looked. Checking what
// is stored is only meaningful once no such INSERT is left, so recovery
// (Recover, and the retry after a failed insert) waits for them first. The
// leader lock guarantees no live daemon is inserting at that moment.
//
// On a replicated table the predecessor may have been connected to another
// replica, so every address of clickhouse.addr is asked. A replica that does
// not answer is skipped: a dead one runs nothing. (One cut off from cdc but
// not from ZooKeeper could still finish an orphaned INSERT after we looked:
// the gap docs/scaling.md names; list every replica in clickhouse.addr.)
func (c *ClickHouse) awaitInflightInserts(ctx context.Context) error {
	for _, conn := range c.peers() {
		if err := c.awaitInflightOn(ctx, conn); err != nil {
			if conn != c.conn && ctx.Err() == nil {
				c.log.Debug("replica not asked for running inserts", "err", err)
				continue
			}
			return err
		}
	}
	return nil
}

func (c *ClickHouse) awaitInflightOn(ctx context.Context, conn driver.Conn) error {
	prefix := "INSERT INTO " + c.table() + " "
	q := fmt.Sprintf("SELECT count() FROM system.processes WHERE startsWith(query, '%s')", strings.ReplaceAll(prefix, "'", "\\'"))
	deadline := time.Now().Add(5 * time.Minute)
	for logged := false; ; {
		var n uint64
		if err := conn.QueryRow(ctx, q).Scan(&n); err != nil {
			return fmt.Errorf("clickhouse %s: list running inserts: %w", c.addr(), err)
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("clickhouse %s: %d INSERTs into %s still running after 5 minutes", c.addr(), n, c.table())
		}
		if !logged {
			c.log.Info("waiting for inserts of a previous attempt to finish before checking what is stored", "table", c.opts.Table, "running", n)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
