package pipeline_test

import (
	"sync/atomic"
	"time"
)

// countingObserver counts what a pipeline reports (pipeline.Observer).
type countingObserver struct {
	received, buffered, insertFailed, inserted, rejected, delivered atomic.Int64
}

func (o *countingObserver) Buffered(received, buffered int) {
	o.received.Add(int64(received))
	o.buffered.Store(int64(buffered))
}
func (o *countingObserver) InsertFailed(error)           { o.insertFailed.Add(1) }
func (o *countingObserver) Inserted(rows int)            { o.inserted.Add(int64(rows)) }
func (o *countingObserver) Rejected(rows int)            { o.rejected.Add(int64(rows)) }
func (o *countingObserver) Delivered(int, time.Duration) { o.delivered.Add(1) }
