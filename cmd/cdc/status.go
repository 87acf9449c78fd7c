package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/logging"
	"github.com/outbox-cdc/outbox-cdc/status"
)

const statusLong = `Show the replication slot's state and lag, the outbox's counts by status and
the age of its oldest pending row, and the ClickHouse table's row count and
newest event.

The columns read depend on the server's version (PostgreSQL 13 to 18):
wal_status and safe_wal_size from 13, the spill and stream counters of
pg_stat_replication_slots from 14, conflicting from 16, inactive_since,
invalidation_reason, failover and synced from 17. What a server does not
have is shown as n/a (null in JSON). Whether a slot is lost or unusable is
decided by the same rule ` + "`cdc run`" + ` follows.

The publication (postgres.publication) is checked as ` + "`cdc run`" + ` checks it at
the start of each term: it must exist, publish inserts and publish the
outbox alone (a partitioned one via its root). A problem is shown with its
fix (publication_error in JSON).

The first line of the table is the verdict: OK, or DEGRADED with what is
wrong (verdict and problems in JSON). Problems are: a non-zero exit code's
reason, no process streaming from the slot, ClickHouse unreachable (or its
table missing), failed rows, pending rows older than --max-pending-age,
a slot lag above replication.lag_warn_bytes, a publication or an outbox
` + "`cdc run`" + ` cannot deliver from.

Output is a table; --json prints one JSON object with snake_case keys (LSNs
as strings such as "0/16B3748", byte counts as integers, unavailable values
as null). --watch refreshes every --interval until Ctrl-C (with --json: one
object per line).

Connecting to each server and every statement is bounded by --timeout, so
the command never hangs. ClickHouse being unreachable makes the verdict
degraded (clickhouse_error says why).

Exit codes (one line on stderr explains any non-zero code):
  0  healthy: the slot exists and can stream
  1  other error (invalid configuration, a failed query, a slot of that
     name cdc cannot use: physical, another plugin, another database)
  2  PostgreSQL unreachable: cannot connect (refused, timed out,
     authentication failed, no such database)
  3  replication slot missing
  4  replication slot lost (invalidated: wal_status = 'lost', conflicting
     on 16+ or an invalidation_reason on 17+; it can never stream again:
     drop it and restart cdc to re-create and backfill)
  5  degraded: the slot is usable, but there are problems (listed in the
     table's first lines, in "problems" in JSON, and on stderr)
With --watch, the exit code is that of the last report shown.`

func statusCmd(configFile *string) *cobra.Command {
	var (
		asJSON   bool
		watch    bool
		interval time.Duration
		timeout  time.Duration
		maxAge   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the slot's lag and the outbox counts",
		Long:  statusLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(*configFile)
			if err != nil {
				return err
			}
			if interval <= 0 {
				return fmt.Errorf("--interval must be positive, got %s", interval)
			}
			if timeout <= 0 {
				return fmt.Errorf("--timeout must be positive, got %s", timeout)
			}
			if maxAge <= 0 {
				return fmt.Errorf("--max-pending-age must be positive, got %s", maxAge)
			}
			opts := statusOptions(cfg, timeout)
			opts.MaxPendingAge = maxAge
			out := cmd.OutOrStdout()
			if !watch {
				r := status.Gather(cmd.Context(), opts)
				if err := printStatus(out, r, asJSON, false); err != nil {
					return err
				}
				return statusExit(r)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return watchStatus(ctx, out, opts, asJSON, interval)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	f.BoolVarP(&watch, "watch", "w", false, "refresh every --interval until Ctrl-C")
	f.DurationVar(&interval, "interval", 2*time.Second, "refresh interval of --watch")
	f.DurationVar(&timeout, "timeout", status.DefaultTimeout, "bound on connecting to each server and on each statement")
	f.DurationVar(&maxAge, "max-pending-age", status.DefaultMaxPendingAge, "pending rows older than this make the verdict degraded")
	return cmd
}

// watchStatus re-gathers and re-renders every interval until ctx ends, then
// returns the exit error of the last report shown.
func watchStatus(ctx context.Context, out io.Writer, opts status.Options, asJSON bool, interval time.Duration) error {
	clearScreen := false
	if f, ok := out.(*os.File); ok && !asJSON && logging.IsTerminal(f) {
		clearScreen = true
	}
	var last *status.Report
	for {
		r := status.Gather(ctx, opts)
		if ctx.Err() != nil {
			break // interrupted while gathering: the report is incomplete
		}
		if clearScreen {
			fmt.Fprint(out, "\033[H\033[2J")
		} else if last != nil && !asJSON {
			fmt.Fprintln(out)
		}
		if err := printStatus(out, r, asJSON, true); err != nil {
			return err
		}
		last = r
		if !statusSleep(ctx, interval) {
			break
		}
	}
	if last == nil {
		return nil
	}
	return statusExit(last)
}

// statusSleep waits d; it returns false when ctx ends first.
func statusSleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// statusExit turns a report's exit code into the error main exits with.
func statusExit(r *status.Report) error {
	err := r.Err()
	if err == nil {
		return nil
	}
	return &exitError{code: int(r.ExitCode), err: err}
}

// printStatus writes r as JSON (indented, or one line in watch mode) or as
// a table. In watch mode the table also shows the reason of a failure
// (otherwise main prints it on stderr when the command exits).
func printStatus(w io.Writer, r *status.Report, asJSON, watching bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		if !watching {
			enc.SetIndent("", "  ")
		}
		return enc.Encode(r)
	}
	return writeStatusTable(w, r, watching)
}

func writeStatusTable(w io.Writer, r *status.Report, showReason bool) error {
	var buf strings.Builder
	if err := renderStatusTable(&buf, r, showReason); err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	_, err := io.WriteString(w, strings.Join(lines, "\n")+"\n")
	return err
}

func renderStatusTable(w io.Writer, r *status.Report, showReason bool) error {
	t := &statusTable{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0), r: r}
	t.verdict(showReason)
	if r.PostgresVersion == nil {
		// PostgreSQL was not reached: nothing else is worth a table (the
		// reason is above in watch mode, else on stderr).
		return t.tw.Flush()
	}
	for _, section := range []func(){t.postgres, t.slot, t.outbox, t.clickhouse, t.warnings} {
		section()
	}
	return t.tw.Flush()
}

// statusTable renders a report as aligned key/value rows, one method per
// section, each opening with a blank row.
type statusTable struct {
	tw *tabwriter.Writer
	r  *status.Report
}

func (t *statusTable) row(k, format string, args ...any) {
	fmt.Fprintf(t.tw, "%s\t%s\n", k, fmt.Sprintf(format, args...))
}

func (t *statusTable) gap() { fmt.Fprintln(t.tw, "\t") }

// vnum is the server_version_num, 0 when unknown.
func (t *statusTable) vnum() int { return stDeref(t.r.PostgresVersionNum) }

// verdict is the first line: OK, or DEGRADED with every problem.
func (t *statusTable) verdict(showReason bool) {
	r := t.r
	verdict := "OK"
	if r.Verdict != status.VerdictOK {
		verdict = "DEGRADED"
		if r.ExitCode != status.Degraded {
			verdict += " (" + strings.ToUpper(strings.ReplaceAll(r.State, "_", " ")) + ")"
		}
		verdict += ": " + strings.Join(r.Problems, "; ")
	}
	t.row("cdc status", "%s  %s", r.Time.Format("2006-01-02 15:04:05 MST"), verdict)
	if showReason && r.Reason != nil && r.ExitCode != status.Degraded {
		t.row("  reason", "%s", *r.Reason)
	}
}

func (t *statusTable) postgres() {
	r := t.r
	t.gap()
	role := "primary"
	if r.InRecovery != nil && *r.InRecovery {
		role = "standby"
	}
	t.row("PostgreSQL", "%s (%s), database %s", *r.PostgresVersion, role, stDeref(r.PostgresDatabase))
	t.row("  current_wal_lsn", "%s", stLSN(r.CurrentWALLSN))
	if r.Publication != "" {
		pub := r.Publication + ": publishes the outbox"
		if r.PublicationError != nil {
			pub = *r.PublicationError
		}
		t.row("  publication", "%s", pub)
	}
}

func (t *statusTable) slot() {
	s, vnum := t.r.SlotInfo, t.vnum()
	t.gap()
	if !s.SlotExists {
		t.row("Slot", "%s: does not exist", s.SlotName)
		return
	}
	t.row("Slot", "%s (%s, %s, database %s%s)", s.SlotName, stDeref(s.SlotType), stOrDash(s.Plugin), stOrDash(s.SlotDatabase),
		map[bool]string{true: ", temporary", false: ""}[s.Temporary != nil && *s.Temporary])
	active := "no"
	if s.Active != nil && *s.Active {
		active = "yes"
		if s.ActivePID != nil {
			active += fmt.Sprintf(", pid %d", *s.ActivePID)
		}
	}
	t.row("  active", "%s", active)
	t.row("  inactive_since", "%s", stSince(vnum, 170000, s.InactiveSince != nil, func() string { return stAgo(*s.InactiveSince, t.r.Time) }, "-"))
	t.row("  wal_status", "%s", stSince(vnum, 130000, s.WALStatus != nil, func() string { return *s.WALStatus }, "-"))
	if s.InvalidationReason != nil {
		t.row("  invalidation_reason", "%s", *s.InvalidationReason)
	}
	t.row("  conflicting", "%s", stSince(vnum, 160000, s.Conflicting != nil, func() string { return stYesNo(*s.Conflicting) }, "-"))
	t.row("  failover / synced", "%s", stSince(vnum, 170000, s.Failover != nil && s.Synced != nil,
		func() string { return stYesNo(*s.Failover) + " / " + stYesNo(*s.Synced) }, "-"))
	t.row("  confirmed_flush_lsn", "%s", stLSN(s.ConfirmedFlushLSN))
	t.row("  restart_lsn", "%s", stLSN(s.RestartLSN))
	t.row("  lag", "%s", stBytesPtr(s.LagBytes))
	t.row("  retained WAL", "%s", stBytesPtr(s.RetainedWALBytes))
	noLimit := "unlimited (max_slot_wal_keep_size = -1)"
	if stDeref(s.WALStatus) == "lost" {
		noLimit = "-"
	}
	t.row("  safe_wal_size", "%s", stSince(vnum, 130000, s.SafeWALSize != nil, func() string { return stBytes(*s.SafeWALSize) }, noLimit))
	t.slotStats()
}

// slotStats shows pg_stat_replication_slots (PostgreSQL 14+).
func (t *statusTable) slotStats() {
	s := t.r.SlotInfo
	switch {
	case t.vnum() < 140000:
		t.row("  spill / stream", "n/a (PostgreSQL 14+)")
	case s.SpillTxns == nil:
		t.row("  spill / stream", "-")
	default:
		t.row("  spilled to disk", "%d txns, %d times, %s", *s.SpillTxns, stDeref(s.SpillCount), stBytesPtr(s.SpillBytes))
		t.row("  streamed", "%d txns, %d times, %s", stDeref(s.StreamTxns), stDeref(s.StreamCount), stBytesPtr(s.StreamBytes))
		decoded := fmt.Sprintf("%d txns, %s", stDeref(s.TotalTxns), stBytesPtr(s.TotalBytes))
		if s.StatsReset != nil {
			decoded += " since " + s.StatsReset.UTC().Format(time.RFC3339)
		}
		t.row("  decoded", "%s", decoded)
	}
}

func (t *statusTable) outbox() {
	r := t.r
	t.gap()
	t.row("Outbox", "%s", r.OutboxTable)
	if r.OutboxError != nil {
		t.row("  error", "%s", *r.OutboxError)
		return
	}
	pending := stCount(r.Pending)
	if r.OldestPendingCreatedAt != nil && r.OldestPendingAgeSeconds != nil {
		pending += fmt.Sprintf(" (oldest created %s, %s ago)", r.OldestPendingCreatedAt.Format("2006-01-02 15:04:05"),
			(time.Duration(*r.OldestPendingAgeSeconds * float64(time.Second))).Round(time.Second))
	}
	t.row("  pending", "%s", pending)
	t.row("  failed", "%s", stCount(r.Failed))
	processed := stCount(r.Processed)
	if r.ProcessedEstimated {
		processed = "~" + processed + " (estimate)"
	}
	t.row("  processed", "%s", processed)
	if r.Updates != nil && r.HOTUpdates != nil {
		t.row("  HOT updates", "%s", stHOT(*r.HOTUpdates, *r.Updates))
	}
	var other []string
	for k, v := range r.OutboxByStatus {
		if k != "pending" && k != "failed" && k != "processed" {
			other = append(other, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if len(other) > 0 {
		sort.Strings(other)
		t.row("  other statuses", "%s", strings.Join(other, ", "))
	}
}

func (t *statusTable) clickhouse() {
	r := t.r
	t.gap()
	if r.ClickHouseVersion != nil {
		t.row("ClickHouse", "%s (server %s)", r.ClickHouseTable, *r.ClickHouseVersion)
	} else {
		t.row("ClickHouse", "%s", r.ClickHouseTable)
	}
	if r.ClickHouseError != nil {
		t.row("  error", "unavailable: %s", *r.ClickHouseError)
		return
	}
	t.row("  rows", "%s", stCountU(r.ClickHouseRows))
	t.row("  newest event", "%s", stTimeAgo(r.ClickHouseNewestEventTime, r.Time))
	if r.ClickHouseNewestInsertedAt != nil {
		t.row("  newest insert", "%s", stTimeAgo(r.ClickHouseNewestInsertedAt, r.Time))
	}
	t.replicas()
}

// replicas shows each replica of clickhouse.cluster: rows of the local
// table, replication queue, delay, and whether it is read-only or down.
func (t *statusTable) replicas() {
	for _, rep := range t.r.ClickHouseReplicas {
		k := fmt.Sprintf("  replica %d.%d", rep.Shard, rep.Replica)
		if rep.Error != nil {
			t.row(k, "%s: unavailable: %s", rep.Host, *rep.Error)
			continue
		}
		state := ""
		if stDeref(rep.ReadOnly) {
			state = ", READ-ONLY"
		}
		t.row(k, "%s: %s rows, queue %d (%d inserts), delay %ds, %d/%d replicas active%s", rep.Host, stCountU(rep.Rows),
			stDeref(rep.QueueSize), stDeref(rep.InsertsInQueue), stDeref(rep.AbsoluteDelaySeconds),
			stDeref(rep.ActiveReplicas), stDeref(rep.TotalReplicas), state)
	}
}

// warnings lists what is not shown in a section already.
func (t *statusTable) warnings() {
	r := t.r
	var warns []string
	for _, w := range r.Warnings {
		if (r.ClickHouseError != nil && strings.HasPrefix(w, "clickhouse unavailable")) ||
			(r.OutboxError != nil && strings.HasPrefix(w, "outbox unavailable")) ||
			(r.PublicationError != nil && w == *r.PublicationError) ||
			(r.Verdict != status.VerdictOK && strings.HasPrefix(w, "no process is streaming")) {
			continue
		}
		warns = append(warns, w)
	}
	if len(warns) > 0 {
		t.gap()
	}
	for i, w := range warns {
		k := ""
		if i == 0 {
			k = "Warnings"
		}
		t.row(k, "- %s", w)
	}
}

// stSince renders a value that exists from server_version_num minVersion on.
func stSince(vnum, minVersion int, ok bool, value func() string, null string) string {
	if vnum < minVersion {
		return fmt.Sprintf("n/a (PostgreSQL %d+)", minVersion/10000)
	}
	if !ok {
		return null
	}
	return value()
}

// stHOT shows the share of the outbox's updates (cdc's markings) that
// were HOT, i.e. wrote no index entry.
func stHOT(hot, updates int64) string {
	if updates == 0 {
		return "no updates yet"
	}
	return fmt.Sprintf("%d of %d (%.1f%%)", hot, updates, 100*float64(hot)/float64(updates))
}

func stLSN(l *status.LSN) string {
	if l == nil {
		return "-"
	}
	return l.String()
}

func stBytesPtr(n *int64) string {
	if n == nil {
		return "-"
	}
	return stBytes(*n)
}

// stBytes renders n as "512 B" or "1.5 MiB (1572864 bytes)".
func stBytes(n int64) string {
	if n < 1024 && n > -1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	i := -1
	for (v >= 1024 || v <= -1024) && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s (%d bytes)", v, units[i], n)
}

func stCount(n *int64) string {
	if n == nil {
		return "-"
	}
	return fmt.Sprint(*n)
}

func stCountU(n *uint64) string {
	if n == nil {
		return "-"
	}
	return fmt.Sprint(*n)
}

func stTimeAgo(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return stAgo(*t, now)
}

func stAgo(t, now time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		return fmt.Sprintf("%s (%s ahead)", t.UTC().Format("2006-01-02 15:04:05 MST"), -d)
	}
	return fmt.Sprintf("%s (%s ago)", t.UTC().Format("2006-01-02 15:04:05 MST"), d)
}

func stDeref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func stYesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func stOrDash(p *string) string {
	if p == nil {
		return "-"
	}
	return *p
}

// statusOptions maps the configuration to what package status inspects, with
// the given timeout (0 means status.DefaultTimeout). It lives here, not in
// status, so that status's API takes only its own types and can be called
// from outside this module.
func statusOptions(cfg *config.Config, timeout time.Duration) status.Options {
	return status.Options{
		PostgresURL: cfg.Postgres.URL,
		Table:       cfg.Postgres.Table,
		Slot:        cfg.Postgres.Slot,
		Publication: cfg.Postgres.Publication,
		ClickHouse: status.ClickHouseOptions{
			Addr:        cfg.ClickHouse.Addr,
			Database:    cfg.ClickHouse.Database,
			Table:       cfg.ClickHouse.Table,
			Cluster:     cfg.ClickHouse.Cluster,
			Username:    cfg.ClickHouse.Username,
			Password:    cfg.ClickHouse.Password,
			DialTimeout: cfg.ClickHouse.DialTimeout,
			DialContext: chclient.DialContext(cfg.ClickHouse),
		},
		Timeout:       timeout,
		LagWarnBytes:  cfg.Replication.LagWarnBytes,
		MaxPendingAge: status.DefaultMaxPendingAge,
	}
}
