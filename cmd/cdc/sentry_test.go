package main

import (
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// sentryServer is a local endpoint that accepts what the Sentry SDK sends.
type sentryServer struct {
	mu        sync.Mutex
	envelopes []string
	dsn       string
}

func newSentryServer(t *testing.T) *sentryServer {
	t.Helper()
	s := &sentryServer{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			if zr, err := gzip.NewReader(r.Body); err == nil {
				body = zr
			}
		}
		b, _ := io.ReadAll(body)
		s.mu.Lock()
		s.envelopes = append(s.envelopes, r.URL.Path+"\n"+string(b))
		s.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		fmt.Fprint(w, `{"id":"00000000000000000000000000000000"}`)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.dsn = fmt.Sprintf("http://publickey@%s/42", ln.Addr())
	return s
}

func (s *sentryServer) find(sub ...string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.envelopes {
		ok := true
		for _, x := range sub {
			ok = ok && strings.Contains(e, x)
		}
		if ok {
			return e
		}
	}
	return ""
}

// An error (here: the ClickHouse table is missing, a set-up error cdc run
// stops on) reaches Sentry with the slot as a tag and the release, and is
// flushed before the process exits.
func TestSentryReceivesErrors(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	sentry := newSentryServer(t)
	env := append(o.Env(), "CDC_HTTP_LISTEN=127.0.0.1:0", "CDC_SENTRY_DSN="+sentry.dsn,
		"CDC_SENTRY_ENVIRONMENT=test-env", "CDC_CLICKHOUSE_TABLE=no_such_table")
	p := startDaemon(t, bin, env, t.TempDir(), "cdc")
	waitUntil(t, "an event at the Sentry endpoint", 30*time.Second, func() bool {
		return sentry.find("no_such_table", o.Slot) != ""
	})
	waitUntil(t, "cdc run to stop on the set-up error", 30*time.Second, func() bool { return !p.running() })
	if code := p.cmd.ProcessState.ExitCode(); code == 0 {
		t.Errorf("exit 0 on a missing ClickHouse table")
	}
	ev := sentry.find("no_such_table", o.Slot)
	for _, want := range []string{"/api/42/envelope/", `"environment":"test-env"`, `"release":"outbox-cdc@`, `"slot":"` + o.Slot + `"`} {
		if !strings.Contains(ev, want) {
			t.Errorf("Sentry event lacks %s:\n%s", want, truncate(ev, 2000))
		}
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
