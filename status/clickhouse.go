package status

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
)

// gatherClickHouse reads the destination table's row count and newest
// event. Failures end up in ClickHouseError; they never fail the report.
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
	timeout := o.timeout()
	if len(c.Addr) == 0 {
		return fmt.Errorf("clickhouse.addr is empty")
	}
	dial := timeout
	if c.DialTimeout > 0 && c.DialTimeout < dial {
		dial = c.DialTimeout
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         c.Addr,
		Auth:         clickhouse.Auth{Database: c.Database, Username: c.Username, Password: c.Password},
		DialTimeout:  dial,
		DialContext:  c.DialContext,
		ReadTimeout:  timeout,
		MaxOpenConns: 1,
	})
	if err != nil {
		return fmt.Errorf("%s: open: %w", strings.Join(c.Addr, ","), err)
	}
	defer conn.Close()

	// One budget for the whole exchange: dialing every address in turn and
	// three small queries.
	ctx, cancel := context.WithTimeout(ctx, 2*timeout)
	defer cancel()

	var version string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(c.Addr, ","), err)
	}
	info.ClickHouseVersion = &version

	rows, err := conn.Query(ctx, "SELECT name FROM system.columns WHERE database = ? AND table = ?", c.Database, c.Table)
	if err != nil {
		return fmt.Errorf("read columns of %s: %w", info.ClickHouseTable, err)
	}
	columns := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return fmt.Errorf("read columns of %s: %w", info.ClickHouseTable, err)
		}
		columns[name] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read columns of %s: %w", info.ClickHouseTable, err)
	}
	if len(columns) == 0 {
		return fmt.Errorf("table %s does not exist (run `cdc migrate`)", info.ClickHouseTable)
	}

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
