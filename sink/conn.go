package sink

import (
	"context"
	"log/slog"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// OpenConn is Open on a connection the caller already has: any clickhouse-go
// driver.Conn (the native or the HTTP transport, or the embedded engine of
// the modern-ClickHouse tests of this package and of migrations/modern). It
// reads the target table's columns like Open; the sink then plans, converts
// and inserts exactly as it does on its own connection. opts.Addr only
// names the server in messages; Close closes conn.
func OpenConn(ctx context.Context, conn driver.Conn, opts Options) (*ClickHouse, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &ClickHouse{conn: conn, opts: opts, log: opts.Logger, hasher: new(hasher)}
	if err := c.loadColumns(ctx); err != nil {
		return nil, err
	}
	if err := c.detectMode(ctx); err != nil {
		return nil, err
	}
	return c, nil
}
