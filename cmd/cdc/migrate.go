package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/errclass"
	"github.com/outbox-cdc/outbox-cdc/migrations"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

func migrateCmd(configFile *string) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the outbox, publication and ClickHouse table (idempotent)",
		Long: `Create or upgrade the outbox, its publication and cdc's tables in PostgreSQL,
and the database and events table in ClickHouse (event_context as JSON on
ClickHouse 25.3 and later, String before; clickhouse.event_context_type
overrides), and the per-event-type tables and materialized views of
views: (docs/analytics.md). Every step is idempotent.

Both servers are reached before either is changed. An existing ClickHouse
table is adopted only when cdc can deliver into it (the columns _lsn, _seq
and _fingerprint as UInt64, outbox columns of types cdc writes); otherwise
migrate fails with the ALTER TABLE that fixes it. The log says what was
applied and what was already there, and warns when wal_level would keep
` + "`cdc run`" + ` from creating its slot.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(*configFile)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
			defer cancel()
			return classified(runMigrate(ctx, cfg, log))
		},
	}
}

// classified adds the category and fix errclass knows to a permanent error.
func classified(err error) error {
	if perr := errclass.Permanent(err); perr != nil {
		return &classifiedError{perr}
	}
	return err
}

// classifiedError reads like the PermanentError without the "cannot start"
// of `cdc run`.
type classifiedError struct{ p *errclass.PermanentError }

func (e *classifiedError) Error() string {
	msg := fmt.Sprintf("%s (%s error)", e.p.Err, e.p.Category)
	if e.p.Fix != "" {
		msg += "; fix: " + e.p.Fix
	}
	return msg
}
func (e *classifiedError) Unwrap() error { return e.p }

func runMigrate(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	// Both servers first: a half-applied migration (PostgreSQL done,
	// ClickHouse unreachable) leaves a publication without its table.
	pg, err := pgx.Connect(ctx, cfg.Postgres.URL)
	if err != nil {
		return fmt.Errorf("postgres: connect: %w", err)
	}
	defer pg.Close(context.Background())
	chOpts := chclient.Options(cfg.ClickHouse)
	chOpts.Auth.Database = "default" // migrate creates clickhouse.database
	chOpts.Compression = nil
	ch, err := clickhouse.Open(chOpts)
	if err != nil {
		return fmt.Errorf("clickhouse: open: %w", err)
	}
	defer ch.Close()
	if err := ch.Ping(ctx); err != nil {
		return fmt.Errorf("clickhouse %s: connect (nothing was changed on either server): %w", strings.Join(cfg.ClickHouse.Addr, ","), err)
	}
	var walLevel string
	if err := pg.QueryRow(ctx, `SELECT current_setting('wal_level')`).Scan(&walLevel); err != nil {
		return fmt.Errorf("postgres: read wal_level: %w", err)
	}
	if walLevel != "logical" {
		log.Warn("wal_level is not logical: `cdc run` cannot create its replication slot until wal_level = logical is set and PostgreSQL restarted",
			"wal_level", walLevel)
	}

	applied, err := migrations.ApplyPostgres(ctx, pg, migrations.Postgres{Table: cfg.Postgres.Table, Publication: cfg.Postgres.Publication})
	if err != nil {
		return err
	}
	logApplied(log, "postgres", applied, "table", cfg.Postgres.Table, "publication", cfg.Postgres.Publication)
	if err := warnMarkingIndexes(ctx, pg, cfg.Postgres.Table, log); err != nil {
		return err
	}

	chApplied, err := migrations.ApplyClickHouse(ctx, ch, migrations.ClickHouse{Database: cfg.ClickHouse.Database, Table: cfg.ClickHouse.Table,
		Cluster: cfg.ClickHouse.Cluster, EventContext: cfg.ClickHouse.EventContextType, Views: migrationViews(cfg.Views),
		// The check `cdc run` makes when it opens the sink.
		Check: func(ctx context.Context, ch driver.Conn) error {
			return sink.CheckTable(ctx, ch, cfg.ClickHouse.Database, cfg.ClickHouse.Table)
		}})
	if err != nil {
		return err
	}
	logApplied(log, "clickhouse", chApplied, "database", cfg.ClickHouse.Database, "table", cfg.ClickHouse.Table)
	return nil
}

// warnMarkingIndexes names each index of an adopted outbox that keeps
// marking from being a HOT update, with its cost and the statement that
// drops it. migrate does not drop it: something else may still query by it.
func warnMarkingIndexes(ctx context.Context, pg *pgx.Conn, table string, log *slog.Logger) error {
	found, err := migrations.FindMarkingIndexes(ctx, pg, table)
	if err != nil {
		return err
	}
	for _, ix := range found {
		log.Warn("postgres: an index of the outbox covers "+ix.Column+", which marking sets", "table", table,
			"index", ix.Name, "definition", ix.Definition, "cost", migrations.MarkingIndexCost, "fix", ix.Drop)
	}
	return nil
}

// migrationViews are the configured views as migrations applies them.
func migrationViews(views []config.View) []migrations.View {
	out := make([]migrations.View, len(views))
	for i, v := range views {
		out[i] = migrations.View{EventType: v.EventType, Table: v.Table}
		for _, c := range v.Columns {
			out[i].Columns = append(out[i].Columns, migrations.ViewColumn{Name: c.Name, Expr: c.Expr})
		}
	}
	return out
}

func logApplied(log *slog.Logger, server string, applied []string, attrs ...any) {
	if len(applied) == 0 {
		log.Info(server+": already up to date, nothing applied", attrs...)
		return
	}
	log.Info(server+" migrated", append(attrs, "applied", applied)...)
}
