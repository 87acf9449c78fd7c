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
		log.Warn("operation failed, retrying", "op", op, "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "err", err)
		if err := Sleep(ctx, wait); err != nil {
			return err
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
