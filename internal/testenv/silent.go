package testenv

import (
	"net"
	"testing"
)

// SilentListener accepts TCP connections on 127.0.0.1 and never answers: a
// server that hangs, for tests of connect and read timeouts. It returns
// host:port; the listener and every connection it accepted are closed when
// the test ends.
func SilentListener(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: silent listener: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Held, not closed: a closed connection answers (EOF).
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}
