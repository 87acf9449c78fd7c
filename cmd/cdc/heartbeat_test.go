package main

import (
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// cdc_heartbeat_lag_seconds is the age of the newest heartbeat that went
// the whole way (its transaction durable: every row before it in ClickHouse
// and marked). When ClickHouse goes away with rows to deliver, heartbeats
// stop getting through and the gauge grows; when ClickHouse is back it
// falls to about the heartbeat interval again.
func TestHeartbeatLagGrowsWhileHeartbeatsDoNotArrive(t *testing.T) {
	bin := cdcBinary(t)
	srv := testenv.StartPrivateClickHouse(t, "heartbeat")
	pgURL := testenv.NewPostgresDB(t)
	env := []string{"CDC_POSTGRES_URL=" + pgURL, "CDC_CLICKHOUSE_ADDR=" + srv.CHAddr,
		"CDC_CLICKHOUSE_DATABASE=hb", "CDC_HEARTBEAT_INTERVAL=200ms", "CDC_BATCH_FLUSH_INTERVAL=100ms",
		"CDC_RETRY_INITIAL_BACKOFF=50ms", "CDC_RETRY_MAX_BACKOFF=500ms", "CDC_LOG_FORMAT=json"}
	migrate(t, bin, env)
	o := testenv.OpenOutbox(t, pgURL, srv.CHAddr, "hb")
	env = append(env, "CDC_POSTGRES_SLOT="+o.Slot) // slots are global to the shared server
	port := testenv.FreePort(t)
	startDaemon(t, bin, withListen(env, port), t.TempDir(), "hb")
	lag := func() float64 {
		v, ok := scrape(t, port)["cdc_heartbeat_lag_seconds"]
		if !ok {
			t.Fatal("cdc_heartbeat_lag_seconds is absent with heartbeat.interval set")
		}
		return v
	}
	o.MustInsert(10, true)
	o.WaitCH(10, time.Minute)
	time.Sleep(3 * time.Second) // past any reading that could still count from the start
	waitUntil(t, "heartbeats getting through (lag under 2 s)", 30*time.Second, func() bool { return lag() < 2 })

	srv.Script(t, "ch-stop")
	o.MustInsert(10, true) // rows the heartbeats after them must wait for
	stopped := time.Now()
	waitUntil(t, "the lag growing past 5 s with ClickHouse down", 60*time.Second, func() bool { return lag() > 5 })
	prev := lag()
	time.Sleep(2 * time.Second)
	if now := lag(); now < prev+1 {
		t.Errorf("lag %.1fs then %.1fs two seconds later: it must keep growing while nothing arrives", prev, now)
	}
	t.Logf("lag %.1fs after ClickHouse stopped %.1fs ago", lag(), time.Since(stopped).Seconds())

	srv.Script(t, "ch-start")
	o.WaitCH(20, 2*time.Minute)
	waitUntil(t, "the lag back under 2 s", 60*time.Second, func() bool { return lag() < 2 })
}
