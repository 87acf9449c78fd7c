// Package lease fences writers: it makes one process at a time the writer of
// an outbox (the slot's leader, or the one re-driving failed rows), and makes
// a process that may have lost that right stop writing before a successor
// starts.
//
// A lease is a session advisory lock plus a row in cdc_lease (name, term,
// holder, expires_at). The lock says who may take over; the row says until
// when the previous holder may still be writing:
//
//   - The holder renews expires_at = now() + ttl every ttl/4 through the
//     lock's own connection, and writes only while Check passes: until ttl
//     minus a guard after the start of its last successful renewal, by its
//     own monotonic clock. A failed renewal (the connection killed by a
//     pooler or an administrator, the server gone) ends the right at once.
//   - A successor that gets the lock first bumps the term, which fences the
//     old holder's markings in PostgreSQL at once (checkpoint checks the
//     term in the marking statement), then waits out the old holder's
//     expires_at before it returns, so before its first write to ClickHouse.
//     Inserts the old holder started before its right ended are awaited by
//     the sink's system.processes fence in Recover.
//   - A holder that is provably gone need not be waited out: one that
//     released the lease (clean shutdown), this very process (an earlier
//     session), or a process on this host that no longer exists (its pid is
//     gone or belongs to a process started later).
//
// The timing assumption is the usual one of leases: clocks of the holder and
// the server run at about the same rate, and an INSERT that passed Check
// reaches ClickHouse within the guard.
package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrLost means the lease ended (or may have ended): the process must write
// nothing more under it. Retrying cannot fix it within this term.
var ErrLost error = lostError("lease lost")

type lostError string

func (e lostError) Error() string { return string(e) }

// Permanent tells retry loops (internal/backoff) to give up at once.
func (lostError) Permanent() bool { return true }

// Lease is a held lease. Check and Term are safe for concurrent use; Keep,
// Renew and Release use the lock's connection and belong to one goroutine.
type Lease struct {
	conn   *pgx.Conn
	name   string
	key    string
	ttl    time.Duration
	term   int64
	holder string
	log    *slog.Logger
	// validUntil is when the right to write ends, in nanoseconds of the
	// monotonic clock since epoch; 0 once lost.
	validUntil atomic.Int64
}

var epoch = time.Now()

// Options for TryAcquire.
type Options struct {
	// Name is the lease's row in cdc_lease (e.g. "leader:cdc_outbox").
	Name string
	// LockKey is the advisory lock's key (hashtext(LockKey)).
	LockKey string
	// TTL is how long a holder that stops renewing may still be writing.
	TTL    time.Duration
	Logger *slog.Logger
	// Wait, when set, is called while waiting out the previous holder.
	Wait func(holder string, remaining time.Duration)
	// Holder names this process in cdc_lease; empty means Self(). Tests set
	// it to play processes of other hosts.
	Holder string
}

// TryAcquire takes the lease through a connection of its own to url. It
// returns nil, nil when another session holds the lock. Otherwise it bumps
// the term, waits out the previous holder's lease when that holder may still
// be writing, and returns a lease that is valid for TTL.
func TryAcquire(ctx context.Context, url string, opts Options) (*Lease, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse postgres.url: %w", err)
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "outbox-cdc"
	}
	serverKeepalives(cfg.RuntimeParams, opts.TTL)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres %s:%d: connect: %w", cfg.Host, cfg.Port, err)
	}
	if opts.Holder == "" {
		opts.Holder = Self()
	}
	l := &Lease{conn: conn, name: opts.Name, key: opts.LockKey, ttl: opts.TTL, holder: opts.Holder, log: opts.Logger}
	ok, err := l.acquire(ctx, opts)
	if err != nil || !ok {
		conn.Close(context.Background())
		return nil, err
	}
	return l, nil
}

// serverKeepalives sets the server's TCP keepalives for the lock's session
// (the tcp_keepalives_* settings, which any session may set for itself;
// ignored on a Unix socket), unless postgres.url sets them. The advisory lock
// lives as long as its session, and when the holder's host vanishes (power
// loss, a partition) nothing tells the server: between renewals it waits
// for the next query with nothing unacknowledged on the wire, so only a
// keepalive finds the peer gone. With the kernel's defaults that takes over
// two hours, and no successor can take the lock meanwhile. Here the server
// closes the session, and releases the lock, within about
// ttl + 3 × max(ttl/4, 1s) of the holder's last packet, in whole seconds
// rounded down (16 s at the default replication.leader_lease of 10s); the
// successor then waits out what is left of the lease, nothing by then.
func serverKeepalives(params map[string]string, ttl time.Duration) {
	secs := func(d time.Duration) string { return strconv.Itoa(max(int(d/time.Second), 1)) }
	for name, value := range map[string]string{
		"tcp_keepalives_idle":     secs(ttl),
		"tcp_keepalives_interval": secs(ttl / 4),
		"tcp_keepalives_count":    "3",
	} {
		if params[name] == "" {
			params[name] = value
		}
	}
}

func (l *Lease) acquire(ctx context.Context, opts Options) (bool, error) {
	var got bool
	if err := l.conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, l.key).Scan(&got); err != nil {
		return false, fmt.Errorf("postgres: take lock %q: %w", l.key, err)
	}
	if !got {
		return false, nil
	}
	// One statement: the previous holder and its remaining time as the
	// server sees them (read in the statement's snapshot, before the
	// update; the advisory lock keeps other successors out), and the new
	// term.
	var prevHolder string
	var remainingMs int64
	err := l.conn.QueryRow(ctx, `
	  WITH prev AS MATERIALIZED (SELECT holder, GREATEST(0, (extract(epoch FROM expires_at - now()) * 1000))::bigint AS ms
	                FROM cdc_lease WHERE name = $1)
	  INSERT INTO cdc_lease AS l (name, term, holder, expires_at) VALUES ($1, 1, $2, now() + $3::interval)
	  ON CONFLICT (name) DO UPDATE SET term = l.term + 1, holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
	  RETURNING l.term, coalesce((SELECT holder FROM prev), ''), coalesce((SELECT ms FROM prev), 0)`,
		l.name, l.holder, l.ttl.String()).Scan(&l.term, &prevHolder, &remainingMs)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			return false, fmt.Errorf("postgres: table cdc_lease does not exist (run `cdc migrate`): %w", err)
		}
		return false, fmt.Errorf("postgres: take lease %q: %w", l.name, err)
	}
	remaining := time.Duration(remainingMs) * time.Millisecond
	if remaining > 0 && mayStillWrite(prevHolder, Self()) {
		// A margin for the server's and our clocks' rates and the round trip.
		wait := remaining + l.guard()
		l.log.Warn("waiting for the previous holder's lease to run out before writing", "lease", l.name,
			"previous_holder", prevHolder, "wait", wait.Round(time.Millisecond))
		if opts.Wait != nil {
			opts.Wait(prevHolder, wait)
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-t.C:
		}
	}
	if err := l.Renew(ctx); err != nil {
		return false, err
	}
	return true, nil
}

// guard is how long before its lease runs out a holder stops writing.
func (l *Lease) guard() time.Duration { return min(l.ttl/4, 2*time.Second) }

// Term is this holder's term, checked by the marking statements.
func (l *Lease) Term() int64 { return l.term }

// Name is the lease's name in cdc_lease.
func (l *Lease) Name() string { return l.name }

// Check returns ErrLost unless the lease is certainly still held: call it
// before every write.
func (l *Lease) Check() error {
	until := l.validUntil.Load()
	if until == 0 {
		return fmt.Errorf("%w: %s (term %d) could not be renewed", ErrLost, l.name, l.term)
	}
	if int64(time.Since(epoch)) >= until {
		return fmt.Errorf("%w: %s (term %d) was not renewed in time", ErrLost, l.name, l.term)
	}
	return nil
}

// Renew extends the lease by TTL from now. Any failure ends it: after an
// error the holder cannot know whether a successor has started.
func (l *Lease) Renew(ctx context.Context) error {
	sent := time.Since(epoch)
	tag, err := l.conn.Exec(ctx, `UPDATE cdc_lease SET expires_at = now() + $3::interval WHERE name = $1 AND term = $2`,
		l.name, l.term, l.ttl.String())
	if err == nil && tag.RowsAffected() == 0 {
		err = errors.New("a successor took the lease")
	}
	if err != nil {
		l.validUntil.Store(0)
		return fmt.Errorf("%w: %s (term %d): renew: %w", ErrLost, l.name, l.term, err)
	}
	l.validUntil.Store(int64(sent + l.ttl - l.guard()))
	return nil
}

// Keep renews the lease every TTL/4 until ctx ends (nil) or a renewal fails
// (ErrLost).
func (l *Lease) Keep(ctx context.Context) error {
	t := time.NewTicker(l.ttl / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := l.Renew(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// Release ends the lease at once, so a successor need not wait, and closes
// its connection (which releases the lock). Call it only once nothing of
// this holder is writing any more.
func (l *Lease) Release(ctx context.Context) {
	l.validUntil.Store(0)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _ = l.conn.Exec(ctx, `UPDATE cdc_lease SET expires_at = now() WHERE name = $1 AND term = $2`, l.name, l.term)
	_ = l.conn.Close(ctx)
}

// Self identifies this process: host, pid, the process's start time and the
// host's boot id, so a later process with the same pid is told apart.
func Self() string {
	host, _ := os.Hostname()
	pid := os.Getpid()
	return fmt.Sprintf("%s/%d/%s/%s", host, pid, startTime(pid), bootID())
}

// mayStillWrite reports whether the previous holder could still be writing:
// it is not this process and not a process of this host known to be gone.
func mayStillWrite(prev, self string) bool {
	if prev == "" || prev == self {
		return false
	}
	p, s := strings.Split(prev, "/"), strings.Split(self, "/")
	if len(p) != 4 || len(s) != 4 || p[0] != s[0] || p[3] == "" || p[3] != s[3] {
		return true // another host (or boot): only the lease can tell
	}
	pid, err := strconv.Atoi(p[1])
	if err != nil {
		return true
	}
	started := startTime(pid)
	return started != "" && started == p[2]
}

// startTime is the start time of process pid (field 22 of /proc/pid/stat,
// in clock ticks since boot), or "" when there is no such process.
func startTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name (field 2) may hold spaces: count from its end.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return ""
	}
	return fields[19]
}

func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
