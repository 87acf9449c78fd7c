package pipeline

import (
	"context"
	"errors"
	"sync"
)

// Budget bounds the bytes of rows a pipeline holds, from the moment a source
// hands a row on until the insert of the batch holding it is over: the
// input channel, the batch being filled, the queued batches and the batch
// being written all count against one limit. The source acquires each row's
// Item.Size before sending it; the pipeline releases a batch's bytes once
// its insert returns (the marking that follows holds only ids).
//
// A row is admitted when it fits, or when nothing is held at all: a row
// larger than the whole budget still goes through, alone.
//
// One goroutine acquires (the pipeline's source): a release wakes it
// through a channel of capacity one, which a second waiter could miss. A nil
// *Budget bounds nothing.
type Budget struct {
	limit int64
	mu    sync.Mutex
	used  int64
	freed chan struct{}
}

// NewBudget returns a budget of limit bytes.
func NewBudget(limit int64) *Budget {
	return &Budget{limit: limit, freed: make(chan struct{}, 1)}
}

// TryAcquire takes n bytes if they fit (or nothing is held) and reports
// whether it did. It never blocks and never allocates.
func (b *Budget) TryAcquire(n int) bool {
	if b == nil || n <= 0 {
		return true
	}
	b.mu.Lock()
	ok := b.used == 0 || b.used+int64(n) <= b.limit
	if ok {
		b.used += int64(n)
	}
	b.mu.Unlock()
	return ok
}

// Freed receives after a release: wait on it when TryAcquire fails, then
// try again. A nil budget's channel never fires (TryAcquire never fails).
func (b *Budget) Freed() <-chan struct{} {
	if b == nil {
		return nil
	}
	return b.freed
}

// Acquire takes n bytes, waiting for releases until they fit. It gives up
// when ctx ends or stop is closed (a nil stop never is), returning
// ErrBudgetStopped for the latter.
func (b *Budget) Acquire(ctx context.Context, n int, stop <-chan struct{}) error {
	for !b.TryAcquire(n) {
		select {
		case <-b.freed:
		case <-stop:
			return ErrBudgetStopped
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// ErrBudgetStopped is Acquire's error when its stop channel closed.
var ErrBudgetStopped = errors.New("pipeline: stopped while waiting for the byte budget")

// Release returns n bytes and wakes a waiting acquirer.
func (b *Budget) Release(n int64) {
	if b == nil || n <= 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	select {
	case b.freed <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// Used is the number of bytes held.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Limit is the budget's size in bytes (0 for a nil budget: no bound).
func (b *Budget) Limit() int64 {
	if b == nil {
		return 0
	}
	return b.limit
}
