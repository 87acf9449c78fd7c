package status

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
)

// gatherClickHouse reads the destination table's row count and newest
// event and, with a cluster, every replica's rows and replication queue.
// Failures end up in ClickHouseError (or the replica's Error); they never
// fail the report.
func gatherClickHouse(ctx context.Context, o Options) ClickHouseInfo {
	c := o.ClickHouse
	info := ClickHouseInfo{ClickHouseTable: c.Database + "." + c.Table}
	if err := readClickHouse(ctx, o, &info); err != nil {
		info.ClickHouseError = ptr(oneLine(err))
	}
	return info
}

func readClickHouse(ctx context.Context, o Options, info *ClickHouseInfo) error {
	c := o.ClickHouse
	if len(c.Addr) == 0 {
		return fmt.Errorf("clickhouse.addr is empty")
	}
	conn, err := openClickHouse(o, c.Addr)
	if err != nil {
		return err
	}
	defer conn.Close()

	// One budget for the whole exchange: dialing every address in turn and
	// three small queries.
	qctx, cancel := context.WithTimeout(ctx, 2*o.timeout())
	defer cancel()
	var version string
	if err := conn.QueryRow(qctx, "SELECT version()").Scan(&version); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(c.Addr, ","), err)
	}
	info.ClickHouseVersion = &version
	columns, err := tableColumns(qctx, conn, c.Database, c.Table)
	if err != nil {
		return fmt.Errorf("read columns of %s: %w", info.ClickHouseTable, err)
	}
	if len(columns) == 0 {
		return fmt.Errorf("table %s does not exist (run `cdc migrate`)", info.ClickHouseTable)
	}
	if err := countRows(qctx, conn, c, columns, info); err != nil {
		return err
	}
	if c.Cluster != "" {
		info.ClickHouseReplicas, err = gatherReplicas(ctx, o, conn)
	}
	return err
}

// openClickHouse opens a connection of one session to addrs, bounded by the
// status timeout (or the shorter clickhouse.dial_timeout).
func openClickHouse(o Options, addrs []string) (driver.Conn, error) {
	c := o.ClickHouse
	timeout := o.timeout()
	dial := timeout
	if c.DialTimeout > 0 && c.DialTimeout < dial {
		dial = c.DialTimeout
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         addrs,
		Auth:         clickhouse.Auth{Database: c.Database, Username: c.Username, Password: c.Password},
		DialTimeout:  dial,
		DialContext:  c.DialContext,
		ReadTimeout:  timeout,
		MaxOpenConns: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: open: %w", strings.Join(addrs, ","), err)
	}
	return conn, nil
}

// tableColumns returns the names of the table's columns; none when the
// table does not exist.
func tableColumns(ctx context.Context, conn driver.Conn, database, table string) (map[string]bool, error) {
	rows, err := conn.Query(ctx, "SELECT name FROM system.columns WHERE database = ? AND table = ?", database, table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	columns := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, err
		}
		columns[name] = true
	}
	return columns, rows.Err()
}

// countRows reads count() and the newest event and insert times of the
// columns the table has.
func countRows(ctx context.Context, conn driver.Conn, c ClickHouseOptions, columns map[string]bool, info *ClickHouseInfo) error {
	exprs := []string{"count()"}
	var count uint64
	dests := []any{&count}
	var newestEvent, newestInsert time.Time
	if columns["event_date_time"] {
		exprs = append(exprs, "max(event_date_time)")
		dests = append(dests, &newestEvent)
	}
	if columns["_inserted_at"] {
		exprs = append(exprs, "max(_inserted_at)")
		dests = append(dests, &newestInsert)
	}
	q := "SELECT " + strings.Join(exprs, ", ") + " FROM " + chclient.QuoteIdent(c.Database) + "." + chclient.QuoteIdent(c.Table)
	if err := conn.QueryRow(ctx, q).Scan(dests...); err != nil {
		return fmt.Errorf("count rows of %s: %w", info.ClickHouseTable, err)
	}
	info.ClickHouseRows = &count
	// max() of an empty table is the zero DateTime (1970-01-01), not NULL.
	if count > 0 {
		if columns["event_date_time"] {
			info.ClickHouseNewestEventTime = ptr(newestEvent.UTC())
		}
		if columns["_inserted_at"] {
			info.ClickHouseNewestInsertedAt = ptr(newestInsert.UTC())
		}
	}
	return nil
}

// gatherReplicas lists the cluster's replicas (system.clusters) and asks
// each, on a connection of its own, for its rows of <table>_local and its
// system.replicas state: a replica that is behind, read-only or down shows
// as such, which a count through the Distributed table (one replica per
// shard) would hide.
func gatherReplicas(ctx context.Context, o Options, conn driver.Conn) ([]ReplicaInfo, error) {
	qctx, cancel := context.WithTimeout(ctx, o.timeout())
	defer cancel()
	rows, err := conn.Query(qctx, `SELECT toUInt32(shard_num), toUInt32(replica_num), host_name, toUInt16(port)
		FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num`, o.ClickHouse.Cluster)
	if err != nil {
		return nil, fmt.Errorf("read replicas of cluster %s: %w", o.ClickHouse.Cluster, err)
	}
	defer rows.Close()
	var replicas []ReplicaInfo
	for rows.Next() {
		var r ReplicaInfo
		var host string
		var port uint16
		if err := rows.Scan(&r.Shard, &r.Replica, &host, &port); err != nil {
			return nil, fmt.Errorf("read replicas of cluster %s: %w", o.ClickHouse.Cluster, err)
		}
		r.Host = host + ":" + strconv.Itoa(int(port))
		replicas = append(replicas, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read replicas of cluster %s: %w", o.ClickHouse.Cluster, err)
	}
	if len(replicas) == 0 {
		return nil, fmt.Errorf("cluster %s is not in the server's remote_servers (clickhouse.cluster)", o.ClickHouse.Cluster)
	}
	for i := range replicas {
		if err := readReplica(ctx, o, &replicas[i]); err != nil {
			replicas[i].Error = ptr(oneLine(err))
		}
	}
	return replicas, nil
}

// readReplica reads one replica's rows of the local table and its
// system.replicas row. Values are cast so that every server version scans
// alike.
func readReplica(ctx context.Context, o Options, r *ReplicaInfo) error {
	conn, err := openClickHouse(o, []string{r.Host})
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*o.timeout())
	defer cancel()
	c := o.ClickHouse
	local := c.Table + "_local"
	var rows uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+chclient.QuoteIdent(c.Database)+"."+chclient.QuoteIdent(local)).Scan(&rows); err != nil {
		return fmt.Errorf("%s: count rows of %s.%s: %w", r.Host, c.Database, local, err)
	}
	r.Rows = &rows
	var queue, inserts, delay, active, total uint64
	var readonly uint8
	err = conn.QueryRow(ctx, `SELECT toUInt64(queue_size), toUInt64(inserts_in_queue), toUInt64(absolute_delay),
		toUInt8(is_readonly), toUInt64(active_replicas), toUInt64(total_replicas)
		FROM system.replicas WHERE database = ? AND table = ?`, c.Database, local).
		Scan(&queue, &inserts, &delay, &readonly, &active, &total)
	if err != nil {
		return fmt.Errorf("%s: read system.replicas for %s.%s: %w", r.Host, c.Database, local, err)
	}
	r.QueueSize, r.InsertsInQueue, r.AbsoluteDelaySeconds = &queue, &inserts, &delay
	r.ReadOnly, r.ActiveReplicas, r.TotalReplicas = ptr(readonly != 0), &active, &total
	return nil
}
