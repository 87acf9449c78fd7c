package pipeline

import "time"

// WithQuietGap sets how long no item must come before a backlog ends
// (Options.quietGap), so tests need not depend on the scheduler's timing.
func WithQuietGap(o Options, d time.Duration) Options {
	o.quietGap = d
	return o
}
