package daemon

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Shutdown is Run's graceful stop; Run's context is its hard stop. They are
// two states: after Begin, Run takes no new rows (it reads no more from the
// slot or the backfill list, and waits for no standby turn or backoff) but
// delivers, marks and confirms what it holds, then returns nil; when the
// context ends, all I/O ends at once and whatever was read but not yet
// durable is not confirmed (the slot sends it again after a restart). One
// signal and one context, rather than two contexts side by side, cannot be
// swapped by mistake.
//
// A nil *Shutdown never drains (retry-failed and replay stop with their
// context alone).
type Shutdown struct {
	drain chan struct{}
	once  sync.Once
}

// NewShutdown returns a Shutdown that has not begun.
func NewShutdown() *Shutdown { return &Shutdown{drain: make(chan struct{})} }

// Begin starts the graceful stop. Calling it again does nothing.
func (s *Shutdown) Begin() { s.once.Do(func() { close(s.drain) }) }

// Drain is closed once the graceful stop began: take no new rows, deliver
// what is buffered. It is nil (never ready) for a nil Shutdown.
func (s *Shutdown) Drain() <-chan struct{} {
	if s == nil {
		return nil
	}
	return s.drain
}

// Draining reports whether the graceful stop began.
func (s *Shutdown) Draining() bool {
	select {
	case <-s.Drain():
		return true
	default:
		return false
	}
}

// errDraining is the error of a wait or a read that gave up because the
// graceful stop began.
var errDraining = errors.New("shutting down: taking no new rows")

// sleep waits d. It returns errDraining when the graceful stop begins first
// and ctx's error when ctx ends first.
func (s *Shutdown) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-s.Drain():
		return errDraining
	case <-ctx.Done():
		return ctx.Err()
	}
}
