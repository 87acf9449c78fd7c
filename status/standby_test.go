package status

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// With a synchronous standby configured and nothing holding logical
// decoding back for it (before 17: nothing can; 17+: synchronized_standby_slots
// is empty), `cdc status` warns, and the exit code still follows the slot.
// A private server: synchronous_standby_names is server-wide.
func TestGatherWarnsWhenConsumerCanPassTheStandby(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := testenv.StartPrivate(t, "status-guard")
	conn, err := pgx.Connect(ctx, s.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, sql := range []string{
		`SELECT pg_create_logical_replication_slot('cdc_outbox', 'pgoutput')`,
		`ALTER SYSTEM SET synchronous_standby_names = 'standby1'`,
		`SELECT pg_reload_conf()`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	o := Options{PostgresURL: s.PGURL, Table: "public.event_outbox", Slot: "cdc_outbox",
		ClickHouse: ClickHouseOptions{Addr: []string{s.CHAddr}, Database: "default", Table: "events", Username: "default"}}
	const prefix = "consumer can get ahead of the synchronous standby: "
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := gather(t, o)
		var found string
		for _, w := range r.Warnings {
			if strings.HasPrefix(w, prefix) {
				found = w
			}
		}
		if found != "" {
			if r.ExitCode != OK {
				t.Fatalf("exit code %d with the warning; want %d (the slot exists)", r.ExitCode, OK)
			}
			if !strings.Contains(found, "standby1") {
				t.Fatalf("warning %q does not name synchronous_standby_names' value", found)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q warning after synchronous_standby_names was set: %q", prefix, r.Warnings)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
