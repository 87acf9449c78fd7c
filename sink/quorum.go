package sink

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// quorumSettings are the settings of a quorum INSERT (none without a
// quorum); integers only: ClickHouse 18 takes settings as varints.
//
// insert_quorum_parallel = 0 where the server has it (20.10 and later,
// where it is on by default): a parallel quorum lets the next INSERT in
// while an earlier one's quorum is open, and select_sequential_consistency
// does not cover parts written that way. The rule this sink keeps (an
// INSERT cut off by the loss of its replica blocks the later ones until its
// quorum is settled, and reads see every settled part) holds only for
// serial quorum inserts, the only kind ClickHouse 18 has.
func (m Mode) quorumSettings(timeout time.Duration) map[string]any {
	if m.Quorum == 0 {
		return nil
	}
	if timeout <= 0 {
		timeout = time.Minute
	}
	s := map[string]any{
		"insert_quorum":         m.Quorum,
		"insert_quorum_timeout": int(timeout / time.Millisecond),
	}
	if m.SerialQuorum {
		s["insert_quorum_parallel"] = 0
	}
	return s
}

// hasSetting reports whether the server knows a setting.
func (c *ClickHouse) hasSetting(ctx context.Context, name string) (bool, error) {
	var n uint64
	if err := c.conn.QueryRow(ctx, "SELECT count() FROM system.settings WHERE name = ?", name).Scan(&n); err != nil {
		return false, fmt.Errorf("clickhouse %s: look up setting %s: %w", c.addr(), name, err)
	}
	return n > 0, nil
}

// awaitSettledQuorum waits until no quorum insert into the table is open,
// before a read that decides what is stored (the high-water mark, the id
// checks).
//
// select_sequential_consistency does not make such a read fail while a
// quorum is open: it leaves out the parts whose quorum is not reached yet.
// If that quorum is reached between the read and the next INSERT (the
// replica that lacked the part fetches it: after a replica comes back, or
// after ZooKeeper does), ClickHouse accepts the INSERT, and rows the read
// did not see are stored twice. Measured: a ZooKeeper outage of 15 s with a
// cdc restart in it left 10 rows twice on both replicas
// (cmd/cdc TestClusterZooKeeperRestart). Once no quorum is open, every part
// is either visible to the read or gone, and none can open behind our back:
// the lease and the in-flight fence leave no other INSERT running.
//
// A quorum that stays open (the only replica with the part never comes
// back) stops delivery here, with an error that names the ZooKeeper node to
// remove once that replica is dropped (docs/scaling.md).
func (c *ClickHouse) awaitSettledQuorum(ctx context.Context) error {
	if c.mode.Quorum == 0 {
		return nil
	}
	var zkPath string
	if err := c.conn.QueryRow(ctx, "SELECT zookeeper_path FROM system.replicas WHERE database = ? AND table = ?",
		c.opts.Database, c.mode.Table).Scan(&zkPath); err != nil {
		return fmt.Errorf("clickhouse %s: read the ZooKeeper path of %s: %w", c.addr(), c.table(), err)
	}
	quorum := strings.TrimRight(zkPath, "/") + "/quorum"
	deadline := time.Now().Add(quorumWait)
	for {
		open, err := c.openQuorums(ctx, quorum)
		if err != nil {
			return err
		}
		if len(open) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("clickhouse %s: a quorum insert into %s is still open (%s in ZooKeeper): waiting until the replicas that lack its part fetch it; "+
				"if the only replica holding it is lost for good, drop that replica and remove the node (docs/scaling.md)",
				c.addr(), c.table(), strings.Join(open, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// quorumWait is how long one check waits for an open quorum before it
// fails (and the caller's retry asks again).
const quorumWait = 10 * time.Second

// openQuorums lists the open quorums under a table's quorum node:
// quorum/status (one insert at a time: ClickHouse 18 and
// insert_quorum_parallel = 0) and the children of quorum/parallel (newer
// servers with insert_quorum_parallel = 1).
func (c *ClickHouse) openQuorums(ctx context.Context, quorum string) ([]string, error) {
	rows, err := c.conn.Query(ctx, "SELECT name, numChildren FROM system.zookeeper WHERE path = ?", quorum)
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: read %s in ZooKeeper: %w", c.addr(), quorum, err)
	}
	defer rows.Close()
	var open []string
	for rows.Next() {
		var name string
		var children int32
		if err := rows.Scan(&name, &children); err != nil {
			return nil, fmt.Errorf("clickhouse %s: read %s in ZooKeeper: %w", c.addr(), quorum, err)
		}
		if name == "status" || (name == "parallel" && children > 0) {
			open = append(open, quorum+"/"+name)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("clickhouse %s: read %s in ZooKeeper: %w", c.addr(), quorum, err)
	}
	return open, nil
}
