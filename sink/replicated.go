package sink

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Replicated tables: exactly once through the loss of a replica.
//
// A ReplicatedMergeTree acknowledges an INSERT once the replica it was sent
// to has written its part; the other replicas fetch it later. If that
// replica dies before they do, the restarted daemon reads its high-water
// mark on a replica without the part, inserts the rows again, and the two
// parts meet when the dead replica comes back: duplicates (issue 17).
//
// So on a Replicated* table every INSERT is a quorum insert (insert_quorum
// = N: acknowledged only once N replicas have the part), and every read
// that decides what is stored (the high-water mark, the id lookups) runs
// with select_sequential_consistency = 1: it sees every part that reached
// its quorum, and fails rather than answer on a replica that lacks one.
// An INSERT whose quorum was not reached (its replica died, or the wait
// timed out) leaves a quorum "in progress"; ClickHouse refuses every later
// quorum insert into the table until it is settled (the part reaches N
// replicas, or it is lost with the replica that wrote it). The retry of the
// batch therefore waits until the earlier attempt's rows are either visible
// to sequentially consistent reads or gone, and then only sends what is
// missing.
//
// The price is availability: with fewer than N replicas alive, inserts
// fail and are retried (rows wait in PostgreSQL). docs/scaling.md measures it.

// QuorumAuto in Options.InsertQuorum asks for a majority of the shard's
// replicas when the table is Replicated*, and no quorum otherwise.
const QuorumAuto = -1

// Mode is how the sink writes: found at Open from system.tables and
// system.replicas, and logged.
type Mode struct {
	Table    string // the table rows are written to
	Engine   string
	Replicas uint64 // total_replicas in system.replicas (0: not replicated)
	Quorum   int    // insert_quorum sent with every INSERT (0: none)
	// SerialQuorum: the server has insert_quorum_parallel (20.10 and
	// later, on by default), which the quorum inserts turn off.
	SerialQuorum bool
}

// Replicated reports whether the table is a Replicated* engine.
func (m Mode) Replicated() bool { return strings.HasPrefix(m.Engine, "Replicated") }

func (m Mode) String() string {
	switch {
	case !m.Replicated():
		return "single server"
	case m.Quorum > 0:
		return fmt.Sprintf("replicated, quorum inserts (%d of %d replicas) with sequentially consistent reads", m.Quorum, m.Replicas)
	default:
		return fmt.Sprintf("replicated WITHOUT quorum (%d replicas): NOT exactly once if the replica written to is lost", m.Replicas)
	}
}

// rowTable is the table the sink writes to and reads from: with a cluster,
// <table>_local (the ReplicatedMergeTree under the Distributed <table>).
func rowTable(opts Options) string {
	if opts.Cluster != "" {
		return opts.Table + "_local"
	}
	return opts.Table
}

// detectMode reads the target table's engine and replica count and settles
// the quorum.
func (c *ClickHouse) detectMode(ctx context.Context) error {
	m := Mode{Table: rowTable(c.opts)}
	if err := c.conn.QueryRow(ctx, "SELECT engine FROM system.tables WHERE database = ? AND name = ?", c.opts.Database, m.Table).Scan(&m.Engine); err != nil {
		return fmt.Errorf("clickhouse %s: read the engine of %s: %w", c.addr(), c.table(), err)
	}
	if m.Engine == "Distributed" {
		return fmt.Errorf("clickhouse %s: %s is a Distributed table: set clickhouse.cluster, so that cdc writes to the replicated table under it (%s_local), where a quorum and consistent reads apply",
			c.addr(), c.table(), c.opts.Table)
	}
	if m.Replicated() {
		var active uint8
		if err := c.conn.QueryRow(ctx, "SELECT toUInt64(total_replicas), toUInt8(active_replicas) FROM system.replicas WHERE database = ? AND table = ?",
			c.opts.Database, m.Table).Scan(&m.Replicas, &active); err != nil {
			return fmt.Errorf("clickhouse %s: read system.replicas for %s: %w", c.addr(), c.table(), err)
		}
		if m.Replicas == 0 {
			// ClickHouse counts the replicas in ZooKeeper and says 0
			// while it cannot reach it: a quorum sized on that (auto:
			// 0/2+1 = 1, i.e. none) would write without one for the
			// life of this sink. Measured in the cluster torture.
			return fmt.Errorf("clickhouse %s: system.replicas reports 0 replicas of %s (ZooKeeper unreachable?): cannot size the insert quorum yet", c.addr(), c.table())
		}
	}
	switch q := c.opts.InsertQuorum; {
	case q == QuorumAuto && m.Replicated():
		m.Quorum = int(m.Replicas/2) + 1
	case q == QuorumAuto:
		m.Quorum = 0
	case q > 0 && !m.Replicated():
		return fmt.Errorf("clickhouse %s: clickhouse.insert_quorum is %d but %s is a %s table, not Replicated*: set it to auto or 0", c.addr(), q, c.table(), m.Engine)
	case uint64(q) > m.Replicas && m.Replicated():
		return fmt.Errorf("clickhouse %s: clickhouse.insert_quorum is %d but %s has %d replicas: no insert could ever succeed", c.addr(), q, c.table(), m.Replicas)
	default:
		m.Quorum = q
	}
	if m.Quorum > 0 {
		var err error
		if m.SerialQuorum, err = c.hasSetting(ctx, "insert_quorum_parallel"); err != nil {
			return err
		}
	}
	c.mode = m
	return nil
}

// Mode returns how the sink writes.
func (c *ClickHouse) Mode() Mode { return c.mode }

// insertContext adds the INSERT's settings: the quorum, and oneBlock's
// squashing settings for a chunked INSERT.
func (c *ClickHouse) insertContext(ctx context.Context, oneBlock bool) context.Context {
	if c.mode.Quorum == 0 && !oneBlock {
		return ctx
	}
	s := clickhouse.Settings{}
	if oneBlock {
		for k, v := range oneBlockInsert {
			s[k] = v
		}
	}
	for k, v := range c.mode.quorumSettings(c.opts.InsertQuorumTimeout) {
		s[k] = v
	}
	return clickhouse.Context(ctx, clickhouse.WithSettings(s))
}

// readContext makes a read that decides what is stored see every insert
// that reached its quorum.
func (c *ClickHouse) readContext(ctx context.Context) context.Context {
	if c.mode.Quorum == 0 {
		return ctx
	}
	return clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"select_sequential_consistency": 1}))
}

// peers returns a connection to each address of clickhouse.addr, for the
// in-flight insert fence: system.processes shows only the server asked, and
// a killed predecessor's INSERT may still run on a replica this sink is not
// connected to. Connections are opened once and kept.
func (c *ClickHouse) peers() []driver.Conn {
	if len(c.opts.Addr) < 2 || !c.mode.Replicated() {
		return []driver.Conn{c.conn}
	}
	if c.peerConns == nil {
		for _, a := range c.opts.Addr {
			// A short dial timeout: a dead replica is skipped, not waited for.
			conn, err := dial(c.opts, []string{a}, 5*time.Second)
			if err != nil {
				continue // an address that does not parse: the main connection reports it
			}
			c.peerConns = append(c.peerConns, conn)
		}
	}
	return c.peerConns
}

func (c *ClickHouse) closePeers() {
	for _, p := range c.peerConns {
		p.Close()
	}
	c.peerConns = nil
}
