package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// While ClickHouse is down, cdc probes it at a short interval: rows arrive
// within about a second of the server answering again, even when the insert
// backoff has grown long. The backoff here starts at 10 s, so a daemon that
// waited it out would deliver 6 s or more after the restart.
func TestClickHouseRecoveryIsPrompt(t *testing.T) {
	bin := cdcBinary(t)
	srv := testenv.StartPrivateClickHouse(t, "chrecover")
	pgURL := testenv.NewPostgresDB(t)
	const db = "chrecover"
	o := testenv.OpenOutbox(t, pgURL, srv.CHAddr, db)
	port := testenv.FreePort(t)
	env := []string{"CDC_POSTGRES_URL=" + pgURL, "CDC_POSTGRES_SLOT=" + o.Slot, "CDC_CLICKHOUSE_ADDR=" + srv.CHAddr,
		"CDC_CLICKHOUSE_DATABASE=" + db, "CDC_RETRY_INITIAL_BACKOFF=10s", "CDC_RETRY_MAX_BACKOFF=30s",
		"CDC_BATCH_FLUSH_INTERVAL=100ms", "CDC_LOG_FORMAT=json", fmt.Sprintf("CDC_HTTP_LISTEN=127.0.0.1:%d", port)}
	migrate(t, bin, env)
	p := startDaemon(t, bin, env, t.TempDir(), "cdc")
	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
	waitUntil(t, "ready", 30*time.Second, func() bool { c, _ := httpGet(readyz); return c == 200 })
	first := o.MustInsert(10, true)
	o.WaitCH(uint64(len(first)), 30*time.Second)

	srv.Script(t, "ch-stop")
	second := o.MustInsert(20, true)
	waitUntil(t, "the insert failing", 30*time.Second, func() bool { return logContains(p.log, "clickhouse insert") })
	waitUntil(t, "/readyz naming ClickHouse", 10*time.Second, func() bool {
		c, body := httpGet(readyz)
		return c == 503 && strings.Contains(body, "clickhouse unreachable (inserts are retried)")
	})
	srv.Script(t, "ch-start") // returns once the server answers
	back := time.Now()
	o.WaitCH(uint64(len(first)+len(second)), 30*time.Second)
	if took := time.Since(back); took > 4*time.Second {
		t.Errorf("rows arrived %s after ClickHouse answered again, want within ~1s (at most 4s on a loaded machine)", took.Round(time.Millisecond))
	} else {
		t.Logf("rows arrived %s after ClickHouse answered again", took.Round(time.Millisecond))
	}
	if code := p.terminate(t, 30*time.Second); code != 0 {
		t.Errorf("cdc run exited %d", code)
	}
	o.AssertExactlyOnce(append(first, second...), nil)
}
