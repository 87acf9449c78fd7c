package main

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/outbox-cdc/outbox-cdc/migrations"
)

func migrateCmd(configFile *string) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the outbox, publication and ClickHouse table (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(*configFile)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
			defer cancel()

			pg, err := pgx.Connect(ctx, cfg.Postgres.URL)
			if err != nil {
				return fmt.Errorf("postgres: connect: %w", err)
			}
			defer pg.Close(context.Background())
			applied, err := migrations.ApplyPostgres(ctx, pg, migrations.Postgres{Table: cfg.Postgres.Table, Publication: cfg.Postgres.Publication})
			if err != nil {
				return err
			}
			log.Info("postgres migrated", "table", cfg.Postgres.Table, "publication", cfg.Postgres.Publication, "applied", applied)

			ch, err := clickhouse.Open(&clickhouse.Options{
				Addr:        cfg.ClickHouse.Addr,
				Auth:        clickhouse.Auth{Database: "default", Username: cfg.ClickHouse.Username, Password: cfg.ClickHouse.Password},
				DialTimeout: cfg.ClickHouse.DialTimeout,
			})
			if err != nil {
				return fmt.Errorf("clickhouse: open: %w", err)
			}
			defer ch.Close()
			chApplied, err := migrations.ApplyClickHouse(ctx, ch, migrations.ClickHouse{Database: cfg.ClickHouse.Database, Table: cfg.ClickHouse.Table, Cluster: cfg.ClickHouse.Cluster})
			if err != nil {
				return err
			}
			log.Info("clickhouse migrated", "database", cfg.ClickHouse.Database, "table", cfg.ClickHouse.Table, "applied", chApplied)
			return nil
		},
	}
}
