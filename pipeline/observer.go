package pipeline

import "time"

// Observer hears what a pipeline does, so that its caller decides what that
// touches: the stream's observer updates the process's metrics, its gauges
// included, while a re-drive's leaves the stream's gauges alone. The
// pipeline itself touches no metric. Methods are called from the pipeline's
// goroutines (the batcher, the writer and a marking at once): they must be
// quick and safe for concurrent use.
type Observer interface {
	// Buffered says that received more rows were taken into the batch
	// being filled, which now holds buffered rows (0 once it is cut).
	Buffered(received, buffered int)
	// InsertFailed says that an insert attempt failed; it is retried.
	InsertFailed(err error)
	// Inserted says that a batch's insert is over: stored rows were
	// inserted (the others were found stored already, or rejected).
	Inserted(stored int)
	// Rejected says that rows ClickHouse rejected are marked failed.
	Rejected(rows int)
	// Delivered says that a batch of rows is inserted and marked; took is
	// the time since its insert began.
	Delivered(rows int, took time.Duration)
}

// Backoff is the wait between attempts of an insert or a marking that
// failed: Initial, doubling up to Max, with jitter.
type Backoff struct {
	Initial, Max time.Duration
}

// noObserver is the observer of a pipeline given none.
type noObserver struct{}

func (noObserver) Buffered(int, int)            {}
func (noObserver) InsertFailed(error)           {}
func (noObserver) Inserted(int)                 {}
func (noObserver) Rejected(int)                 {}
func (noObserver) Delivered(int, time.Duration) {}
