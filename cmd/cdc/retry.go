package main

import (
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/outbox-cdc/outbox-cdc/internal/daemon"
)

func retryFailedCmd(configFile *string) *cobra.Command {
	var maxAttempts int
	cmd := &cobra.Command{
		Use:   "retry-failed",
		Short: "Re-send rows marked failed, once their cause is fixed",
		Long: `Re-send outbox rows with status 'failed' to ClickHouse. Rows it accepts
become 'processed'; rows it rejects again stay 'failed' with the new error
and one more attempt. Every row is looked up by id in ClickHouse before it is
inserted, and only one re-drive of an outbox runs at a time, so running this
again (also after a crash) never inserts a row twice. It can run while
'cdc run' streams.

Exit codes:
  0  every re-sent row was delivered (or none was failed)
  1  error (configuration, a server unreachable, a failed query)
  2  invalid flags (--max-attempts below 0)
  5  rows are still failing after the run: ClickHouse rejected them again
     (their last_error says why; fix the cause and run it again)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if maxAttempts < 0 {
				return &exitError{code: 2, err: fmt.Errorf("--max-attempts must be 0 (every failed row) or a positive number of attempts, got %d", maxAttempts)}
			}
			cfg, log, err := loadConfig(*configFile)
			if err != nil {
				return err
			}
			setMemoryLimit(cfg.Batch.MaxBytes)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			pool, err := daemon.OpenPool(ctx, cfg)
			if err != nil {
				return err
			}
			defer pool.Close()
			res, err := daemon.RetryFailed(ctx, cfg, pool, log, maxAttempts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "re-sent %d failed rows: %d delivered, %d still failing\n",
				res.Read, res.Read-res.StillFailed, res.StillFailed)
			if res.StillFailed > 0 {
				return &exitError{code: 5, err: fmt.Errorf("%d rows still failing: ClickHouse rejected them again; see last_error in %s (status = 'failed'), fix the cause and run cdc retry-failed again",
					res.StillFailed, cfg.Postgres.Table)}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&maxAttempts, "max-attempts", 0, "only rows with fewer attempts than this (0: every failed row)")
	return cmd
}
