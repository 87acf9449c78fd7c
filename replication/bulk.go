package replication

import (
	"crypto/tls"
	"net"
	"syscall"
	"time"
)

// The walsender writes each change to the socket as it decodes it. A reader
// that keeps up is woken once per change: at full speed that costs the
// reader and the walsender more CPU than the changes themselves, on both
// sides of the socket. While the stream is busy, the socket's receive
// low-water mark keeps the reader asleep until bulkLowWater bytes are
// queued, and a short read deadline bounds the wait when the stream slows.
// A wait that ends on the deadline switches back to waking per change, so
// a quiet outbox keeps its latency and costs no timer wake-ups.
const (
	bulkLowWater = 32 << 10
	bulkWait     = 10 * time.Millisecond
	// bulkRate is the receive rate (bytes per second) above which a stream
	// counts as busy; it is measured over windows of rateWindow.
	bulkRate   = 8 << 20
	rateWindow = 20 * time.Millisecond
)

// bulkMode tracks the receive rate and switches the socket between waking
// per change and waking per bulkLowWater bytes.
type bulkMode struct {
	conn     net.Conn
	on       bool
	disabled bool // the socket does not support a low-water mark
	winStart time.Time
	winBytes int
}

// received accounts n bytes received at now, and enters bulk mode when the
// rate over the last window was high. The caller's next wait follows the
// mode (see wait).
func (b *bulkMode) received(now time.Time, n int) error {
	b.winBytes += n
	el := now.Sub(b.winStart)
	if el < rateWindow {
		return nil
	}
	busy := float64(b.winBytes) >= bulkRate*el.Seconds()
	b.winStart, b.winBytes = now, 0
	if busy && !b.on && !b.disabled {
		return b.set(true)
	}
	return nil
}

// timedOut switches back to waking per change after a wait ran out.
func (b *bulkMode) timedOut(now time.Time) error {
	b.winStart, b.winBytes = now, 0
	if !b.on {
		return nil
	}
	return b.set(false)
}

// wait is how long one receive may wait given the caller's timeout.
func (b *bulkMode) wait(timeout time.Duration) time.Duration {
	if b.on {
		return min(timeout, bulkWait)
	}
	return timeout
}

func (b *bulkMode) set(on bool) error {
	lowat := 1
	if on {
		lowat = bulkLowWater
	}
	c := b.conn
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		b.disabled = true
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = setLowWater(fd, lowat) }); err != nil {
		return err
	}
	if serr != nil {
		b.disabled = true
		if on {
			return nil // not supported here: keep waking per change
		}
		return serr
	}
	b.on = on
	return nil
}
