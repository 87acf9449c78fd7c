package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func statusCmd(configFile *string) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the slot's lag and the outbox counts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return errors.New("not implemented yet")
		},
	}
}

func retryFailedCmd(configFile *string) *cobra.Command {
	return &cobra.Command{
		Use:   "retry-failed",
		Short: "Re-send rows marked failed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return errors.New("not implemented yet")
		},
	}
}
