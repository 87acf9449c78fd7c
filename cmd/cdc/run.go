package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/getsentry/sentry-go"
	"github.com/spf13/cobra"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/daemon"
	"github.com/outbox-cdc/outbox-cdc/internal/httpapi"
	"github.com/outbox-cdc/outbox-cdc/internal/logging"
	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
)

func loadConfig(path string) (*config.Config, *slog.Logger, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	log, err := logging.New(os.Stderr, cfg.Log.Level, cfg.Log.Format, logging.IsTerminal(os.Stderr))
	if err != nil {
		return nil, nil, err
	}
	chclient.Warn(log, cfg.ClickHouse)
	return cfg, log, nil
}

func runCmd(configFile *string) *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Stream outbox rows into ClickHouse until SIGTERM/SIGINT",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(*configFile)
			if err != nil {
				return err
			}
			return run(cfg, log)
		},
	}
}

func run(cfg *config.Config, log *slog.Logger) (err error) {
	if cfg.Sentry.DSN != "" {
		release := cfg.Sentry.Release
		if release == "" {
			release = "outbox-cdc@" + version
		}
		if err := sentry.Init(sentry.ClientOptions{Dsn: cfg.Sentry.DSN, Release: release, Environment: cfg.Sentry.Environment}); err != nil {
			return fmt.Errorf("sentry.dsn: %w", err)
		}
		defer sentry.Flush(5 * time.Second)
		defer func() {
			if r := recover(); r != nil {
				sentry.CurrentHub().Recover(r)
				sentry.Flush(5 * time.Second)
				panic(r)
			}
		}()
	}

	stop, stopNow := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stopNow()
	// The signal begins the graceful stop (sd); hard bounds it: grace after
	// the signal, all I/O ends.
	sd := daemon.NewShutdown()
	hard, cancelHard := context.WithCancel(context.Background())
	defer cancelHard()
	// finished is closed when run returns, before stopNow cancels stop: a
	// stop that finds it closed is the return, not a signal, and must not
	// announce a shutdown (it would precede every start-up error).
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		<-stop.Done()
		select {
		case <-finished:
			return
		default:
		}
		log.Info("shutting down: delivering buffered rows", "grace", cfg.Shutdown.Grace)
		sd.Begin()
		t := time.NewTimer(cfg.Shutdown.Grace)
		defer t.Stop()
		select {
		case <-t.C:
			cancelHard()
		case <-hard.Done():
		}
	}()

	procs := setMaxProcs(cfg.Runtime.MaxProcs)
	memLimit := setMemoryLimit(cfg.Batch.MaxBytes)
	m := metrics.New()
	m.SetInfo(cfg.Postgres.Slot, cfg.Postgres.Table)
	d := daemon.New(cfg, log, m)

	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("http.listen %s: %w", cfg.HTTP.Listen, err)
	}
	srv := &http.Server{Handler: httpapi.Handler(httpapi.Options{Metrics: m.Handler(), Ready: d.Ready, Pprof: cfg.HTTP.Pprof}), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "listen", cfg.HTTP.Listen, "err", err)
		}
	}()
	defer srv.Close()
	log.Info("cdc starting", "version", version, "slot", cfg.Postgres.Slot, "table", cfg.Postgres.Table,
		"clickhouse", cfg.ClickHouse.Addr, "http", ln.Addr().String(), "max_procs", procs,
		"memory_limit", memLimit)

	if err := d.Run(hard, sd); err != nil {
		log.Error("cdc stopped", "err", err)
		sentry.CaptureException(err)
		return err
	}
	return nil
}

// setMemoryLimit gives the garbage collector a soft memory limit that
// follows from the memory bound, peak RSS < 2 × batch.max_bytes + 64 MiB
// (docs/configuration.md, Memory), unless the GOMEMLIMIT environment variable is
// set; it returns the limit in effect. The rows held take at most
// 2 × batch.max_bytes (the pipeline's byte budget), the driver's buffers
// and the runtime a few MiB more; but by default the collector lets the heap
// grow to twice what is live before it collects, which alone would break
// the bound. Near the limit it collects sooner instead.
func setMemoryLimit(maxBytes int64) int64 {
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok {
		debug.SetMemoryLimit(memoryLimit(maxBytes))
	}
	return debug.SetMemoryLimit(-1)
}

// memoryLimit is the garbage collector's soft limit for batch.max_bytes:
// the bound less 32 MiB for what the limit does not count (the binary's
// code and data resident in memory, some 20 MiB) and a margin. What is
// live stays well under it: the rows (at most 2 × batch.max_bytes), the
// driver's buffers (sink.chunkBytes) and the runtime's own, some 8-12 MiB
// (measured with 64 KB rows: 35-40 MB live at the default 16 MiB).
func memoryLimit(maxBytes int64) int64 {
	return 2*maxBytes + 32<<20
}

// setMaxProcs applies runtime.max_procs unless the GOMAXPROCS environment
// variable is set, and returns the value in effect.
func setMaxProcs(n int) int {
	if _, ok := os.LookupEnv("GOMAXPROCS"); !ok {
		runtime.GOMAXPROCS(n)
	}
	return runtime.GOMAXPROCS(0)
}
