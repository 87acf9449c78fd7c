package daemon

import (
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
)

// heartbeatClock measures cdc_heartbeat_lag_seconds: the age of the newest
// heartbeat (pg_logical_emit_message, heartbeat.interval) that has gone the
// whole way, i.e. whose transaction is durable: every outbox row committed
// before it is in ClickHouse and marked processed. It grows while none gets
// there — a stream that stalls behind a row ClickHouse does not take, a
// walsender that stopped sending, a session that keeps restarting — which
// the emit-to-decode time it replaces could not show: that one froze at its
// last value.
//
// Until a heartbeat has arrived, the age counts from the clock's start (the
// process start), so an instance that never delivers one shows a growing
// value too. A standby's value therefore grows as well: aggregate the
// instances of one slot with min.
type heartbeatClock struct {
	mu      sync.Mutex
	newest  time.Time       // emit time of the newest durable heartbeat, or the start
	seen    []heartbeatSeen // heartbeats decoded but not yet durable, in stream order
	durable func() pglogrepl.LSN
}

type heartbeatSeen struct {
	end  pglogrepl.LSN // end of the heartbeat's transaction
	sent time.Time     // the time it carries (when it was emitted)
}

// maxHeartbeatsSeen bounds the heartbeats kept while none becomes durable
// (a stalled stream): beyond it the oldest are forgotten, which can only
// make the age read higher, never lower.
const maxHeartbeatsSeen = 1024

func newHeartbeatClock(start time.Time) *heartbeatClock {
	return &heartbeatClock{newest: start}
}

// follow makes the clock read durability from a new stream's tracker.
// Heartbeats of the previous stream that were not confirmed are sent again
// by the new one, so they are forgotten here.
func (h *heartbeatClock) follow(durable func() pglogrepl.LSN) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.durable, h.seen = durable, h.seen[:0]
}

// saw records a heartbeat decoded in the transaction ending at end.
func (h *heartbeatClock) saw(end pglogrepl.LSN, sent time.Time) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.seen) == maxHeartbeatsSeen {
		h.seen = append(h.seen[:0], h.seen[1:]...)
	}
	h.seen = append(h.seen, heartbeatSeen{end: end, sent: sent})
}

// age returns how old the newest durable heartbeat is at now.
func (h *heartbeatClock) age(now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.durable != nil {
		d, n := h.durable(), 0
		for ; n < len(h.seen) && h.seen[n].end <= d; n++ {
			if h.seen[n].sent.After(h.newest) {
				h.newest = h.seen[n].sent
			}
		}
		h.seen = append(h.seen[:0], h.seen[n:]...)
	}
	return max(now.Sub(h.newest), 0)
}
