package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// An adopted outbox may keep an index of its own on status (the old
// poller's WHERE status IN (…)); marking rows processed then writes every
// index instead of being a HOT update. `cdc migrate` names such an index,
// its cost and the DROP INDEX; `cdc status` shows the HOT share of the
// outbox's updates, which rises once the index is gone.
func TestMarkingIndexIsNamedAndHOTRatioShown(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	if _, err := o.PG.Exec(ctx, `CREATE INDEX poller_todo ON event_outbox (id) WHERE status IN ('pending', 'failed')`); err != nil {
		t.Fatal(err)
	}

	out, code, _ := runWithArgs(t, bin, o.Env(), time.Minute, "migrate")
	for _, want := range []string{`"index":"public.poller_todo"`, `"fix":"DROP INDEX CONCURRENTLY public.poller_todo;"`, "no longer a HOT update"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("migrate with an index on status: exit %d, want 0 and %q in:\n%s", code, want, out)
		}
	}

	port := testenv.FreePort(t)
	startDaemon(t, bin, withListen(o.Env(), port), t.TempDir(), "hot")
	o.MustInsert(200, true)
	o.WaitCH(200, time.Minute)
	hot, upd := waitMarked(t, bin, o, 200)
	if hot > upd/10 {
		t.Errorf("with an index on status: %d of %d updates HOT, want (nearly) none", hot, upd)
	}

	if _, err := o.PG.Exec(ctx, `DROP INDEX poller_todo`); err != nil {
		t.Fatal(err)
	}
	if out, code, _ := runWithArgs(t, bin, o.Env(), time.Minute, "migrate"); code != 0 || strings.Contains(out, "HOT update") {
		t.Fatalf("migrate without the index: exit %d, want 0 and no warning:\n%s", code, out)
	}
	o.MustInsert(200, true)
	o.WaitCH(400, time.Minute)
	hot2, upd2 := waitMarked(t, bin, o, upd+200)
	if hot2-hot < 180 {
		t.Errorf("without the index: %d of the last %d updates HOT, want nearly all", hot2-hot, upd2-upd)
	}
	t.Logf("HOT updates: %d of %d with the index, %d of the next %d without it", hot, upd, hot2-hot, upd2-upd)
	table, _ := runCdc(t, bin, o.Env(), "status")
	if !strings.Contains(table, "HOT updates") {
		t.Errorf("cdc status does not show the HOT updates:\n%s", table)
	}
}

// waitMarked waits until `cdc status --json` counts at least n updates of
// the outbox (the statistics arrive within a second or so) and returns the
// HOT and all updates.
func waitMarked(t *testing.T, bin string, o *testenv.Outbox, n int64) (hot, upd int64) {
	t.Helper()
	waitUntil(t, "the markings in pg_stat_user_tables", 30*time.Second, func() bool {
		out, _ := runCdc(t, bin, o.Env(), "status", "--json")
		var r struct {
			Updates    *int64 `json:"updates"`
			HOTUpdates *int64 `json:"hot_updates"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		if r.Updates == nil || r.HOTUpdates == nil {
			t.Fatalf("status --json has no updates/hot_updates:\n%s", out)
		}
		hot, upd = *r.HOTUpdates, *r.Updates
		return upd >= n
	})
	return hot, upd
}
