// Package backoff retries operations against servers that may be down, with
// capped exponential delays and jitter, logging every failed attempt.
package backoff

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Policy is a capped exponential backoff.
type Policy struct {
	Initial time.Duration
	Max     time.Duration
}

// Delay returns the wait before attempt n (n >= 1 is the first retry):
// Initial·2^(n-1), capped at Max, with ±20% jitter so restarted daemons do
// not retry in lockstep.
func (p Policy) Delay(n int) time.Duration {
	d := p.Initial
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	if d > p.Max {
		d = p.Max
	}
	jitter := time.Duration(float64(d) * (rand.Float64()*0.4 - 0.2))
	return d + jitter
}

// Retry calls fn until it succeeds or ctx ends, waiting between attempts.
// op names the operation in the log line; fn's error should name the server.
// It returns ctx's error if ctx ends first, and a permanent error (one with
// a Permanent() bool method that returns true, such as a lost lease) at once.
func Retry(ctx context.Context, p Policy, log *slog.Logger, op string, fn func(context.Context) error) error {
	return RetryProbing(ctx, p, Probe{}, log, op, fn)
}

// Probe shortens the wait after a failure that says the server is down:
// instead of waiting out a backoff of up to Policy.Max after the server is
// back, the retry asks Up every Interval and tries again as soon as it
// answers. Failures the server itself reported (it is up, e.g. too many
// parts) keep the full backoff, so a struggling server is not hammered.
type Probe struct {
	// Down reports whether err means the server could not be reached.
	Down func(err error) bool
	// Up checks, cheaply, whether the server answers again.
	Up func(ctx context.Context) error
	// Interval between checks; 0 means 200ms.
	Interval time.Duration
}

// RetryProbing is [Retry] whose waits after a Down error end as soon as the
// probe's server answers (at most the backoff delay). A zero Probe makes it
// Retry.
func RetryProbing(ctx context.Context, p Policy, probe Probe, log *slog.Logger, op string, fn func(context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			if attempt > 1 {
				log.Info("recovered", "op", op, "attempts", attempt)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if IsPermanent(err) {
			return err
		}
		wait := p.Delay(attempt)
		if probe.applies(err) {
			log.Warn("operation failed, server unreachable; retrying as soon as it answers", "op", op, "attempt", attempt,
				"retry_in_at_most", wait.Round(time.Millisecond), "err", err)
			if err := probe.wait(ctx, wait); err != nil {
				return err
			}
			continue
		}
		log.Warn("operation failed, retrying", "op", op, "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "err", err)
		if err := Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

func (pr Probe) applies(err error) bool {
	return pr.Up != nil && pr.Down != nil && pr.Down(err)
}

// wait returns after limit, or as soon as Up answers, or when ctx ends (with
// its error). Each check is bounded, so a server that does not answer at all
// (packets dropped) cannot stretch the wait.
func (pr Probe) wait(ctx context.Context, limit time.Duration) error {
	interval := pr.Interval
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	deadline := time.Now().Add(limit)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		if err := Sleep(ctx, min(interval, left)); err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, max(interval, time.Second))
		up := pr.Up(pctx) == nil
		cancel()
		if up {
			return nil
		}
	}
}

// Sleep waits d or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// IsPermanent reports whether err (or an error it wraps) says that retrying
// cannot help.
func IsPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}
