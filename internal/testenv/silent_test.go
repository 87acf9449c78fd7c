package testenv

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// A client of SilentListener connects, and then waits for an answer until
// its own deadline: nothing is ever written, and nothing is closed.
func TestSilentListener(t *testing.T) {
	addr := SilentListener(t)
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	n, err := conn.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %d bytes, %v; want a timeout (no answer, no close)", n, err)
	}
}
