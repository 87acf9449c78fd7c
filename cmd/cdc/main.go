// Command cdc streams a PostgreSQL transactional outbox into ClickHouse
// through logical replication. See README.md.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Set by -ldflags at build time.
var (
	version = "dev"
	commit  = "unknown"
)

// exitError carries a specific exit code (cdc status uses several).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "cdc:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	var configFile string
	root := &cobra.Command{
		Use:           "cdc",
		Short:         "Stream a PostgreSQL outbox table into ClickHouse through logical replication",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&configFile, "config", "", "configuration file (YAML); every key can be overridden by CDC_<SECTION>_<KEY>")
	root.AddCommand(runCmd(&configFile), migrateCmd(&configFile), statusCmd(&configFile), retryFailedCmd(&configFile), verifyCmd(&configFile), replayCmd(&configFile), versionCmd(&configFile))
	return root
}
