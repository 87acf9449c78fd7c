package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/daemon"
	"github.com/outbox-cdc/outbox-cdc/internal/logging"
	"github.com/outbox-cdc/outbox-cdc/verify"
)

const verifyLong = `Compare the outbox's processed rows with ClickHouse and report:

  missing        processed in the outbox, absent in ClickHouse
  duplicated     stored more than once in ClickHouse (same row identity)
  not_in_outbox  in ClickHouse but gone from the outbox (as after
                 outbox.retention); for information, not an error

each with a count and up to 100 sample ids. Rows not yet processed (pending,
failed, in flight) are never missing. An id stored with two different row
identities (_fingerprint) is a reused id, not a duplicate: the stored row
that is not the outbox's is not_in_outbox.

Ids are compared by a digest per range of ids on both sides, and id by id
only where the digests differ. PostgreSQL is read by primary-key ranges, one
short statement each; it can run while 'cdc run' streams.

--from-id/--to-id bound the ids compared; --since/--until select the ids of
the rows created (created_at, UTC) in that window: an RFC 3339 time, a date
(2006-01-02), or a duration meaning that long ago (24h). Without a range,
every id is compared.

Exit codes: 0 nothing missing or duplicated, 5 differences found, 1 error.`

const replayLong = `Re-deliver the processed outbox rows of a range that ClickHouse lost (a
dropped partition, a restored backup, a truncated table): verify finds them,
and they go through the same sink as 'cdc retry-failed' with the same
conversions, under the same lock (one re-drive of an outbox at a time,
fenced). Every row is looked up in ClickHouse by id and identity before it
is inserted, so it is safe while 'cdc run' streams, and running it again
after it was killed inserts nothing twice. Rows keep their status.

Duplicates are never removed: 'cdc verify' reports them, and
docs/operations.md shows the ALTER TABLE ... DELETE an operator may run.

The range is required: --from-id and --to-id, or --since and --until (as for
'cdc verify'). --dry-run only counts the rows it would re-deliver.`

// rangeFlags are the range options verify and replay share.
type rangeFlags struct {
	fromID, toID int64
	since, until string
}

func (r *rangeFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.Int64Var(&r.fromID, "from-id", 0, "first id to compare (inclusive)")
	f.Int64Var(&r.toID, "to-id", 0, "last id to compare (inclusive)")
	f.StringVar(&r.since, "since", "", "rows created at or after this time (RFC 3339, 2006-01-02 or a duration ago such as 24h)")
	f.StringVar(&r.until, "until", "", "rows created before this time (default: now)")
}

// resolve turns the flags into an id range; ok is false when a time window
// holds no rows. required makes an empty range an error.
func (r *rangeFlags) resolve(ctx context.Context, cmd *cobra.Command, pool *pgxpool.Pool, table string, required bool) (daemon.Range, bool, error) {
	f := cmd.Flags()
	byID := f.Changed("from-id") || f.Changed("to-id")
	byTime := f.Changed("since") || f.Changed("until")
	switch {
	case byID && byTime:
		return daemon.Range{}, false, errors.New("give either --from-id/--to-id or --since/--until, not both")
	case byID:
		rng := daemon.All
		if f.Changed("from-id") {
			rng.FromID = r.fromID
		}
		if f.Changed("to-id") {
			rng.ToID = r.toID
		}
		if required && (!f.Changed("from-id") || !f.Changed("to-id")) {
			return rng, false, errors.New("give both --from-id and --to-id")
		}
		if rng.FromID > rng.ToID {
			return rng, false, fmt.Errorf("--from-id %d is after --to-id %d", rng.FromID, rng.ToID)
		}
		return rng, true, nil
	case byTime:
		now := time.Now()
		since, until := time.Time{}, now
		var err error
		if r.since == "" {
			return daemon.Range{}, false, errors.New("--until needs --since")
		}
		if since, err = parseWhen(r.since, now); err != nil {
			return daemon.Range{}, false, fmt.Errorf("--since: %w", err)
		}
		if r.until != "" {
			if until, err = parseWhen(r.until, now); err != nil {
				return daemon.Range{}, false, fmt.Errorf("--until: %w", err)
			}
		} else if required {
			return daemon.Range{}, false, errors.New("give both --since and --until")
		}
		if !since.Before(until) {
			return daemon.Range{}, false, fmt.Errorf("--since %s is not before --until %s", since.Format(time.RFC3339), until.Format(time.RFC3339))
		}
		from, to, ok, err := verify.IDsCreated(ctx, pool, table, since, until)
		return daemon.Range{FromID: from, ToID: to}, ok, err
	case required:
		return daemon.Range{}, false, errors.New("a range is required: --from-id N --to-id N, or --since T --until T")
	}
	return daemon.All, true, nil
}

// parseWhen reads an RFC 3339 time, a date or datetime (UTC), or a duration
// before now.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a time (2006-01-02T15:04:05Z, 2006-01-02) nor a duration (24h)", s)
}

func verifyCmd(configFile *string) *cobra.Command {
	var asJSON bool
	cmd := rangeCmd(configFile, &cobra.Command{
		Use:   "verify",
		Short: "Find processed rows missing in ClickHouse, and rows stored twice",
		Long:  verifyLong,
	}, false, func(cmd *cobra.Command, r rangeRun) error {
		rep := &verify.Report{Missing: verify.Finding{Sample: []int64{}}, Duplicated: verify.Finding{Sample: []int64{}}, NotInOutbox: verify.Finding{Sample: []int64{}}}
		if r.ok {
			bar := newProgressBar(os.Stderr, "verify", asJSON)
			var err error
			rep, err = daemon.Verify(r.ctx, r.cfg, r.pool, r.log, r.rng, bar.update)
			bar.done()
			if err != nil {
				return err
			}
		}
		if err := printVerify(cmd.OutOrStdout(), rep, asJSON); err != nil {
			return err
		}
		if !rep.Clean() {
			return &exitError{code: 5, err: fmt.Errorf("differences found: %d missing, %d duplicated", rep.Missing.Count, rep.Duplicated.Count)}
		}
		return nil
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

func replayCmd(configFile *string) *cobra.Command {
	var dryRun bool
	cmd := rangeCmd(configFile, &cobra.Command{
		Use:   "replay",
		Short: "Re-deliver processed rows of a range that ClickHouse lost",
		Long:  replayLong,
	}, true, func(cmd *cobra.Command, r rangeRun) error {
		out := cmd.OutOrStdout()
		if !r.ok {
			fmt.Fprintln(out, "replay: no outbox rows were created in that window")
			return nil
		}
		bar := newProgressBar(os.Stderr, "replay", false)
		res, err := daemon.Replay(r.ctx, r.cfg, r.pool, r.log, r.rng, dryRun, bar.update)
		bar.done()
		if err != nil {
			return err
		}
		if dryRun {
			fmt.Fprintf(out, "replay --dry-run: found %d missing rows in ids %d..%d; nothing re-delivered\n", res.Found, r.rng.FromID, r.rng.ToID)
			return nil
		}
		fmt.Fprintf(out, "replay: found %d missing rows, inserted %d, already present %d", res.Found, res.Inserted, res.AlreadyPresent)
		if res.Rejected > 0 {
			fmt.Fprintf(out, ", rejected by ClickHouse %d (see the log)", res.Rejected)
		}
		fmt.Fprintln(out)
		if res.Rejected > 0 {
			return fmt.Errorf("ClickHouse rejected %d rows", res.Rejected)
		}
		return nil
	})
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only count the rows that would be re-delivered")
	return cmd
}

// rangeRun is what a range command runs with: the configuration, the
// outbox's pool, and the range its flags resolved to (ok is false when a
// time window holds no rows).
type rangeRun struct {
	ctx  context.Context
	cfg  *config.Config
	log  *slog.Logger
	pool *pgxpool.Pool
	rng  daemon.Range
	ok   bool
}

// rangeCmd makes cmd a command over a range of outbox ids (verify, replay):
// it takes the range flags, opens the outbox, resolves the range (required
// makes an empty one an error) and calls run until SIGTERM/SIGINT.
func rangeCmd(configFile *string, cmd *cobra.Command, required bool, run func(cmd *cobra.Command, r rangeRun) error) *cobra.Command {
	var rf rangeFlags
	cmd.Args = cobra.NoArgs
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, log, pool, ctx, done, err := openOutbox(cmd, *configFile)
		if err != nil {
			return err
		}
		defer done()
		rng, ok, err := rf.resolve(ctx, cmd, pool, cfg.Postgres.Table, required)
		if err != nil {
			return err
		}
		return run(cmd, rangeRun{ctx: ctx, cfg: cfg, log: log, pool: pool, rng: rng, ok: ok})
	}
	rf.register(cmd)
	return cmd
}

// openOutbox loads the configuration and opens the PostgreSQL pool, with a
// context that ends on SIGTERM/SIGINT.
func openOutbox(cmd *cobra.Command, configFile string) (*config.Config, *slog.Logger, *pgxpool.Pool, context.Context, func(), error) {
	cfg, log, err := loadConfig(configFile)
	if err != nil {
		return nil, nil, nil, nil, nil, err
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
	pool, err := daemon.OpenPool(ctx, cfg)
	if err != nil {
		stop()
		return nil, nil, nil, nil, nil, err
	}
	return cfg, log, pool, ctx, func() { pool.Close(); stop() }, nil
}

func printVerify(out io.Writer, r *verify.Report, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(out)
		return enc.Encode(r)
	}
	rate := 0.0
	if r.Seconds > 0 {
		rate = float64(r.Rows) / r.Seconds
	}
	fmt.Fprintf(out, "compared %d processed outbox rows with %d ClickHouse rows", r.Rows, r.ClickHouseRows)
	if r.FromID != math.MinInt64 || r.ToID != math.MaxInt64 {
		fmt.Fprintf(out, " (ids %d..%d)", r.FromID, r.ToID)
	}
	fmt.Fprintf(out, " in %.1fs (%.0f rows/s)\n", r.Seconds, rate)
	for _, f := range []struct {
		name string
		f    verify.Finding
	}{{"missing", r.Missing}, {"duplicated", r.Duplicated}, {"not_in_outbox", r.NotInOutbox}} {
		fmt.Fprintf(out, "%-14s %d", f.name+":", f.f.Count)
		if len(f.f.Sample) > 0 {
			ids := make([]string, len(f.f.Sample))
			for i, id := range f.f.Sample {
				ids[i] = fmt.Sprint(id)
			}
			more := ""
			if f.f.Count > int64(len(ids)) {
				more = ", …"
			}
			fmt.Fprintf(out, "  ids %s%s", strings.Join(ids, ", "), more)
		}
		fmt.Fprintln(out)
	}
	return nil
}

// progressBar draws a one-line bar on a terminal, and nothing elsewhere.
type progressBar struct {
	out   *os.File
	label string
	on    bool
	start time.Time
	last  time.Time
}

func newProgressBar(out *os.File, label string, quiet bool) *progressBar {
	return &progressBar{out: out, label: label, on: !quiet && logging.IsTerminal(out), start: time.Now()}
}

func (b *progressBar) update(p verify.Progress) {
	if !b.on || p.Total == 0 || (time.Since(b.last) < 200*time.Millisecond && p.Done < p.Total) {
		return
	}
	b.last = time.Now()
	frac := float64(p.Done) / float64(p.Total)
	const width = 30
	n := int(frac * width)
	rate := float64(p.Rows) / max(time.Since(b.start).Seconds(), 1e-3)
	fmt.Fprintf(b.out, "\r%s [%s%s] %3.0f%%  %d rows  %.0f rows/s ", b.label,
		strings.Repeat("=", n), strings.Repeat(" ", width-n), frac*100, p.Rows, rate)
}

func (b *progressBar) done() {
	if b.on && !b.last.IsZero() {
		fmt.Fprint(b.out, "\r\033[K")
	}
}
