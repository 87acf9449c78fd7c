package backoff

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

var (
	errDown   = errors.New("dial tcp: connection refused")
	errServer = errors.New("server: too many parts")
)

// A failure that says the server is down is retried as soon as the probe
// answers, not after the backoff; a failure the server reported waits the
// backoff out and never probes.
func TestRetryProbing(t *testing.T) {
	cases := []struct {
		name      string
		failWith  error
		initial   time.Duration
		upAfter   int32 // Up answers from this call on
		wantProbe bool
		atLeast   time.Duration
		atMost    time.Duration
	}{
		{"server down, back at the third probe", errDown, 10 * time.Second, 3, true, 100 * time.Millisecond, 3 * time.Second},
		{"server down, probe never answers: the backoff bounds the wait", errDown, 500 * time.Millisecond, 1 << 30, true, 400 * time.Millisecond, 3 * time.Second},
		{"server error: full backoff, no probe", errServer, 500 * time.Millisecond, 1, false, 400 * time.Millisecond, 3 * time.Second},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var calls, probes atomic.Int32
			probe := Probe{
				Down: func(err error) bool { return errors.Is(err, errDown) },
				Up: func(context.Context) error {
					if probes.Add(1) >= tc.upAfter {
						return nil
					}
					return errDown
				},
				Interval: 50 * time.Millisecond,
			}
			start := time.Now()
			err := RetryProbing(context.Background(), Policy{Initial: tc.initial, Max: tc.initial}, probe, log, "op",
				func(context.Context) error {
					if calls.Add(1) == 1 {
						return tc.failWith
					}
					return nil
				})
			took := time.Since(start)
			if err != nil || calls.Load() != 2 {
				t.Fatalf("err %v after %d calls, want success at the second", err, calls.Load())
			}
			if (probes.Load() > 0) != tc.wantProbe {
				t.Errorf("%d probes, want probing %v", probes.Load(), tc.wantProbe)
			}
			if took < tc.atLeast || took > tc.atMost {
				t.Errorf("retried after %s, want between %s and %s", took, tc.atLeast, tc.atMost)
			}
		})
	}
}

// A wait for the server ends with the context.
func TestRetryProbingStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	probe := Probe{Down: func(error) bool { return true }, Up: func(context.Context) error { return errDown }, Interval: 20 * time.Millisecond}
	err := RetryProbing(ctx, Policy{Initial: time.Minute, Max: time.Minute}, probe, slog.New(slog.NewTextHandler(io.Discard, nil)), "op",
		func(context.Context) error { return errDown })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err %v, want the context's", err)
	}
}
