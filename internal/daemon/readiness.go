package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/outbox-cdc/outbox-cdc/pipeline"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// readiness is what /readyz answers. The session goroutine sets why the
// instance is not streaming (starting, standby with the holder,
// backfilling, waiting for the slot, the last session error); the stream's
// writer reports whether inserts lose their quorum; the HTTP goroutine
// reads both, then asks ClickHouse. Each reason says what the instance is
// doing, so an operator reading a 503 knows whether to wait or act.
type readiness struct {
	phase  atomic.Pointer[string] // nil while streaming
	quorum atomic.Pointer[string] // the last insert's lost quorum; nil after a success
}

func newReadiness() *readiness {
	r := &readiness{}
	r.set("starting")
	return r
}

func (r *readiness) set(format string, args ...any) {
	reason := fmt.Sprintf(format, args...)
	r.phase.Store(&reason)
}

func (r *readiness) streaming() { r.phase.Store(nil) }

// inserted records an insert's outcome: a lost quorum stays the reason
// until an insert succeeds; other failures leave it as it was.
func (r *readiness) inserted(err error) {
	switch {
	case err == nil:
		r.quorum.Store(nil)
	case sink.QuorumLost(err):
		reason := strings.ReplaceAll(err.Error(), "\n", " ")
		r.quorum.Store(&reason)
	}
}

// check returns nil when the instance streams, its inserts reach their
// quorum and ClickHouse answers ping (ch; nil when not yet connected).
func (r *readiness) check(ctx context.Context, ch pipeline.Pinger) error {
	if p := r.phase.Load(); p != nil {
		return errors.New(*p)
	}
	if ch == nil {
		return errors.New("clickhouse not connected")
	}
	if q := r.quorum.Load(); q != nil {
		return fmt.Errorf("clickhouse insert quorum lost (inserts are retried): %s", *q)
	}
	if err := ch.Ping(ctx); err != nil {
		return fmt.Errorf("clickhouse unreachable (inserts are retried): %w", err)
	}
	return nil
}

// observedWriter reports every insert's outcome to readiness; Ping passes
// through, so the pipeline still probes a ClickHouse that is down.
type observedWriter struct {
	w     *sink.ClickHouse
	ready *readiness
}

func (o observedWriter) Write(ctx context.Context, rows []sink.Row) (sink.Result, error) {
	res, err := o.w.Write(ctx, rows)
	o.ready.inserted(err)
	return res, err
}

func (o observedWriter) Ping(ctx context.Context) error { return o.w.Ping(ctx) }

func (o observedWriter) Appendable(rows []sink.Row) bool { return o.w.Appendable(rows) }

func (o observedWriter) Append(ctx context.Context, rows []sink.Row) ([]sink.Rejected, error) {
	rejected, err := o.w.Append(ctx, rows)
	if err != nil {
		o.ready.inserted(err)
	}
	return rejected, err
}

func (o observedWriter) Abandon() { o.w.Abandon() }

func (o observedWriter) Commit(ctx context.Context) error {
	err := o.w.Commit(ctx)
	o.ready.inserted(err)
	return err
}

// onceThenEvery lets a repeated log line through the first time, then at
// most once per interval: a wait that lasts says so without flooding the log.
type onceThenEvery struct {
	every time.Duration
	first time.Time
	last  time.Time
}

func newOnceThenEvery(every time.Duration) *onceThenEvery { return &onceThenEvery{every: every} }

func (o *onceThenEvery) allow() bool {
	now := time.Now()
	if o.first.IsZero() {
		o.first, o.last = now, now
		return true
	}
	if now.Sub(o.last) < o.every {
		return false
	}
	o.last = now
	return true
}

// since is how long ago the line was first let through.
func (o *onceThenEvery) since() time.Duration { return time.Since(o.first).Round(time.Second) }
