package replication

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

func TestWantFailoverSlot(t *testing.T) {
	pg15 := Server{VersionNum: 150018, Version: "15.18"}
	pg17 := Server{VersionNum: 170010, Version: "17.10"}
	pg18 := Server{VersionNum: 180004, Version: "18.4"}
	standby17 := Server{VersionNum: 170010, Version: "17.10", InRecovery: true}
	tests := []struct {
		mode    string
		srv     Server
		want    bool
		wantErr string // substring; "" = no error
	}{
		{"auto", pg15, false, ""},
		{"auto", pg17, true, ""},
		{"auto", pg18, true, ""},
		{"auto", standby17, false, ""},
		{"", pg17, true, ""},
		{"false", pg15, false, ""},
		{"false", pg17, false, ""},
		{"true", pg17, true, ""},
		{"true", pg18, true, ""},
		{"true", pg15, false, "postgres.failover_slot is true but PostgreSQL 15.18 (server_version_num 150018) has no failover slots (17+)"},
		{"true", standby17, false, "postgres.failover_slot is true but postgres.url reaches a standby"},
		{"maybe", pg17, false, `postgres.failover_slot must be one of auto, true, false, got "maybe"`},
	}
	for _, tt := range tests {
		t.Run(tt.mode+"/"+tt.srv.Version, func(t *testing.T) {
			got, err := WantFailoverSlot(tt.mode, tt.srv)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("WantFailoverSlot = %v, %v; want %v, nil", got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("WantFailoverSlot error = %v, want it to contain %q", err, tt.wantErr)
			}
			if tt.mode == "true" && !errors.Is(err, ErrFailoverUnsupported) {
				t.Fatalf("error %v does not wrap ErrFailoverUnsupported", err)
			}
		})
	}
}

// The slot of the server under test (scripts/testenv.sh, any major): on 17+
// cdc creates a failover slot and upgrades a plain one; before 17 both are
// refused by the server and WantFailoverSlot never asks for them.
func TestFailoverSlotOnServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := testenv.NewOutbox(t)
	srv, err := ReadServer(ctx, o.PG)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server: PostgreSQL %s (%d)", srv.Version, srv.VersionNum)
	if srv.InRecovery {
		t.Fatal("the test server is a standby")
	}
	want, err := WantFailoverSlot(FailoverAuto, srv)
	if err != nil || want != (srv.VersionNum >= PG17) {
		t.Fatalf("WantFailoverSlot(auto) = %v, %v on %d", want, err, srv.VersionNum)
	}

	conn, err := Connect(ctx, o.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	failoverSlot, plainSlot := o.Slot+"_f", o.Slot+"_p"
	t.Cleanup(func() {
		for _, s := range []string{failoverSlot, plainSlot} {
			_, _ = o.PG.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, s)
		}
	})

	created, err := CreateFailoverSlot(ctx, conn, failoverSlot)
	if srv.VersionNum < PG17 {
		if err == nil {
			t.Fatalf("CreateFailoverSlot succeeded on PostgreSQL %s", srv.Version)
		}
		if _, err := WantFailoverSlot(FailoverOn, srv); !errors.Is(err, ErrFailoverUnsupported) {
			t.Fatalf("WantFailoverSlot(true) on %s = %v, want ErrFailoverUnsupported", srv.Version, err)
		}
		if is, err := SlotFailover(ctx, o.PG, srv, failoverSlot); err != nil || is {
			t.Fatalf("SlotFailover before 17 = %v, %v; want false, nil", is, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("CreateFailoverSlot: %v", err)
	}
	if created.ConsistentPoint == 0 || created.Snapshot == "" {
		t.Fatalf("CreateFailoverSlot = %+v, want a consistent point and a snapshot", created)
	}
	// The exported snapshot is usable, as the backfill needs it.
	tx, err := o.PG.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+created.Snapshot+"'"); err != nil {
		t.Fatalf("SET TRANSACTION SNAPSHOT of the failover slot: %v", err)
	}
	_ = tx.Rollback(ctx)
	if is, err := SlotFailover(ctx, o.PG, srv, failoverSlot); err != nil || !is {
		t.Fatalf("SlotFailover(created with FAILOVER) = %v, %v; want true", is, err)
	}

	if _, err := CreateSlot(ctx, conn, plainSlot); err != nil {
		t.Fatal(err)
	}
	if is, err := SlotFailover(ctx, o.PG, srv, plainSlot); err != nil || is {
		t.Fatalf("SlotFailover(plain slot) = %v, %v; want false", is, err)
	}
	if err := EnableFailover(ctx, conn, plainSlot); err != nil {
		t.Fatalf("EnableFailover: %v", err)
	}
	if is, err := SlotFailover(ctx, o.PG, srv, plainSlot); err != nil || !is {
		t.Fatalf("SlotFailover after ALTER_REPLICATION_SLOT = %v, %v; want true", is, err)
	}
	if _, err := SlotFailover(ctx, o.PG, srv, o.Slot+"_missing"); !errors.Is(err, ErrSlotNotFound) {
		t.Fatalf("SlotFailover(missing slot) = %v, want ErrSlotNotFound", err)
	}
}

func TestStandbyGuardHazard(t *testing.T) {
	on, off := true, false
	pg15 := Server{VersionNum: 150018, Version: "15.18"}
	pg17 := Server{VersionNum: 170010, Version: "17.10"}
	tests := []struct {
		name     string
		g        StandbyGuard
		failover *bool
		want     string // substring; "" = no hazard
	}{
		{"15 no synchronous standby", StandbyGuard{Server: pg15}, nil, ""},
		{"15 synchronous standby", StandbyGuard{Server: pg15, SynchronousStandbyNames: "*"}, nil,
			"synchronous_standby_names is set (*) but PostgreSQL 15.18 cannot hold logical decoding back"},
		{"15 standby itself", StandbyGuard{Server: Server{VersionNum: 150018, InRecovery: true}, SynchronousStandbyNames: "*"}, nil, ""},
		{"17 no synchronous standby", StandbyGuard{Server: pg17}, &on, ""},
		{"17 synchronous standby, no synchronized_standby_slots", StandbyGuard{Server: pg17, SynchronousStandbyNames: "s1"}, &on,
			"synchronized_standby_slots is empty"},
		{"17 guarded failover slot", StandbyGuard{Server: pg17, SynchronousStandbyNames: "s1", SynchronizedStandbySlots: "sb"}, &on, ""},
		{"17 guarded, slot unknown", StandbyGuard{Server: pg17, SynchronousStandbyNames: "s1", SynchronizedStandbySlots: "sb"}, nil, ""},
		{"17 guarded but not a failover slot", StandbyGuard{Server: pg17, SynchronousStandbyNames: "s1", SynchronizedStandbySlots: "sb"}, &off,
			`slot "cdc" is not a failover slot`},
		{"17 synchronized_standby_slots without synchronous names", StandbyGuard{Server: pg17, SynchronizedStandbySlots: "sb"}, &off,
			`slot "cdc" is not a failover slot`},
		{"17 standby itself", StandbyGuard{Server: Server{VersionNum: 170010, InRecovery: true}, SynchronousStandbyNames: "*"}, &off, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.g.Hazard("cdc", tt.failover)
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Fatalf("Hazard = %q, want %q", got, tt.want)
			}
		})
	}
}

// ReadStandbyGuard on a private server (the settings are server-wide; a
// synchronous standby name on the shared servers would concern every test):
// it sees synchronous_standby_names and, on 17+, synchronized_standby_slots.
func TestReadStandbyGuard(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := testenv.StartPrivate(t, "guard")
	conn, err := pgx.Connect(ctx, s.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	g, err := ReadStandbyGuard(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if g.SynchronousStandbyNames != "" || g.SynchronizedStandbySlots != "" || g.Hazard("cdc", nil) != "" {
		t.Fatalf("fresh server: %+v, hazard %q; want no settings and no hazard", g, g.Hazard("cdc", nil))
	}

	// No standby exists: the test server commits with synchronous_commit =
	// off, so nothing waits for one.
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`ALTER SYSTEM SET synchronous_standby_names = 'standby1'`)
	exec(`SELECT pg_reload_conf()`)
	waitSetting := func(name, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var got string
			// A new connection sees the reloaded file at once.
			c, err := pgx.Connect(ctx, s.PGURL)
			if err == nil {
				err = c.QueryRow(ctx, `SELECT current_setting($1)`, name).Scan(&got)
				c.Close(ctx)
			}
			if err == nil && got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s = %q (%v) after reload, want %q", name, got, err, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitSetting("synchronous_standby_names", "standby1")
	conn2, err := pgx.Connect(ctx, s.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close(context.Background())
	g, err = ReadStandbyGuard(ctx, conn2)
	if err != nil {
		t.Fatal(err)
	}
	if g.SynchronousStandbyNames != "standby1" {
		t.Fatalf("SynchronousStandbyNames = %q, want standby1", g.SynchronousStandbyNames)
	}
	on := true
	if h := g.Hazard("cdc", &on); h == "" {
		t.Fatalf("no hazard with a synchronous standby and no synchronized_standby_slots: %+v", g)
	}
	if g.VersionNum < PG17 {
		return
	}

	exec(`SELECT pg_create_physical_replication_slot('standby1_slot')`)
	exec(`ALTER SYSTEM SET synchronized_standby_slots = 'standby1_slot'`)
	exec(`SELECT pg_reload_conf()`)
	waitSetting("synchronized_standby_slots", "standby1_slot")
	conn3, err := pgx.Connect(ctx, s.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn3.Close(context.Background())
	if g, err = ReadStandbyGuard(ctx, conn3); err != nil {
		t.Fatal(err)
	}
	if g.SynchronizedStandbySlots != "standby1_slot" {
		t.Fatalf("SynchronizedStandbySlots = %q, want standby1_slot", g.SynchronizedStandbySlots)
	}
	if h := g.Hazard("cdc", &on); h != "" {
		t.Fatalf("hazard %q with synchronized_standby_slots and a failover slot", h)
	}
	off := false
	if h := g.Hazard("cdc", &off); !strings.Contains(h, "not a failover slot") {
		t.Fatalf("hazard %q for a plain slot, want 'not a failover slot'", h)
	}
}
