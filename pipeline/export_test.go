package pipeline

import "time"

// WithQuietGap sets how long no item must come before a backlog ends
// (Options.quietGap), so tests need not depend on the scheduler's timing.
func WithQuietGap(o Options, d time.Duration) Options {
	o.quietGap = d
	return o
}

// WithLinger sets how fast a batch must fill to count as a backlog and how
// long a partial batch waits while an INSERT is open (Options.linger).
func WithLinger(o Options, d time.Duration) Options {
	o.linger = d
	return o
}
