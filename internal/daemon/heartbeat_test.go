package daemon

import (
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// The heartbeat lag reads the newest heartbeat whose transaction is durable,
// never one that is only decoded, and grows while none becomes durable.
func TestHeartbeatClock(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	var durable pglogrepl.LSN
	clock := newHeartbeatClock(t0)
	clock.follow(func() pglogrepl.LSN { return durable })
	// The steps run in order on one clock.
	for _, tt := range []struct {
		name    string
		step    func(h *heartbeatClock)
		now     int
		wantAge int
	}{
		{"none yet: counts from the start", func(*heartbeatClock) {}, 5, 5},
		{"decoded, not durable", func(h *heartbeatClock) { h.saw(100, at(4)) }, 6, 6},
		{"durable", func(*heartbeatClock) { durable = 100 }, 7, 3},
		{"two decoded, the first durable", func(h *heartbeatClock) {
			h.saw(200, at(8))
			h.saw(300, at(9))
			durable = 250
		}, 10, 2},
		{"nothing more arrives: it grows", func(*heartbeatClock) {}, 20, 12},
		{"a new stream forgets what it will re-send", func(h *heartbeatClock) {
			durable = 0
			h.follow(func() pglogrepl.LSN { return durable })
			durable = 1000
		}, 21, 13},
		{"a clock running behind the emitter reads 0, not less", func(h *heartbeatClock) {
			h.saw(1000, at(30))
		}, 22, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.step(clock)
			if got := clock.age(at(tt.now)); got != time.Duration(tt.wantAge)*time.Second {
				t.Fatalf("age = %s, want %ds", got, tt.wantAge)
			}
		})
	}
}
