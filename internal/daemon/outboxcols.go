package daemon

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
)

// outboxColumns are the names of the outbox table's columns, for
// sink.Options.SourceColumns: the sink then refuses at start a ClickHouse
// column of one of these names that it cannot convert to, so `cdc run`
// stops with the table, column and type instead of marking every row
// failed. A missing table yields none; the publication check names it.
func outboxColumns(ctx context.Context, pool *pgxpool.Pool, table string) ([]string, error) {
	rows, err := pool.Query(ctx, `SELECT attname::text FROM pg_attribute
	  WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, checkpoint.QuoteTable(table))
	if err != nil {
		return nil, fmt.Errorf("postgres: read the columns of %s: %w", table, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("postgres: read the columns of %s: %w", table, err)
	}
	return names, nil
}
