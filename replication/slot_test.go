package replication

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// connectDB opens a connection to a fresh database and returns it with the
// database's name (which tests use as their slot name: slots are shared by
// the whole server).
func connectDB(t *testing.T) (*pgx.Conn, string, string) {
	t.Helper()
	dbURL := testenv.NewPostgresDB(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn, dbURL, strings.TrimPrefix(u.Path, "/")
}

// LookupSlot reads the columns of the server's version: the test asserts the
// version-specific ones wherever it runs (15 here; 14–18 in CI's matrix).
func TestLookupSlotReadsVersionColumns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, db := connectDB(t)
	slot := db

	if _, err := LookupSlot(ctx, conn, slot); err == nil || !strings.Contains(err.Error(), slot) {
		t.Fatalf("missing slot: err %v, want ErrSlotNotFound naming it", err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		t.Fatal(err)
	}
	var version int
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	t.Logf("server_version_num %d", version)

	s, err := LookupSlot(ctx, conn, slot)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Exists || s.Name != slot || s.SlotType != "logical" || s.Plugin != "pgoutput" || s.Database != db ||
		s.CurrentDatabase != db || s.ServerVersionNum != version || s.Active || s.RestartLSN == 0 || s.ConfirmedFlush == 0 {
		t.Errorf("slot %+v", s)
	}
	if version >= pg13 && s.WALStatus != "reserved" {
		t.Errorf("wal_status %q, want reserved", s.WALStatus)
	}
	// Each column is non-nil exactly where the server has it: a valid slot
	// has conflicting = false (16+), failover and synced false and an
	// inactive_since (17+); invalidation_reason is null on a valid slot.
	for _, c := range []struct {
		name  string
		since int
		has   bool
	}{
		{"conflicting", pg16, s.Conflicting != nil},
		{"inactive_since", pg17, s.InactiveSince != nil},
		{"failover", pg17, s.Failover != nil},
		{"synced", pg17, s.Synced != nil},
	} {
		if c.has != (version >= c.since) {
			t.Errorf("%s read = %v on %d, want %v", c.name, c.has, version, version >= c.since)
		}
	}
	if (s.Conflicting != nil && *s.Conflicting) || s.InvalidationReason != nil || (s.Failover != nil && *s.Failover) ||
		(s.Synced != nil && *s.Synced) {
		t.Errorf("a fresh slot reads conflicting %v, invalidation_reason %v, failover %v, synced %v",
			s.Conflicting, s.InvalidationReason, s.Failover, s.Synced)
	}
	if h := s.Health(); h.Class != SlotUsable || s.CheckUsable() != nil {
		t.Errorf("fresh slot: %s %q", h.Class, h.Reason)
	}

	// The query of every older version runs here too (the version switch
	// only ever drops columns).
	for _, v := range []int{120000, pg13, 140000, pg15, pg16, pg17, 180000} {
		if v > version {
			continue
		}
		var row slotRow
		q, dests := lookupSlotQuery(v, &row)
		if err := conn.QueryRow(ctx, q, slot).Scan(dests...); err != nil || row.name != slot {
			t.Errorf("query for %d: %v\n%s", v, err, q)
		}
	}
}

// A slot of the same name in another database is not ours: the classifier
// says so for `cdc run` as `cdc status` does.
func TestLookupSlotOfAnotherDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, db := connectDB(t)
	other, _, _ := connectDB(t)
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, db); err != nil {
		t.Fatal(err)
	}
	s, err := LookupSlot(ctx, other, db)
	if err != nil {
		t.Fatal(err)
	}
	h := s.Health()
	if h.Class != SlotUnusable || !strings.Contains(h.Reason, "belongs to database "+strconv.Quote(db)) || s.CheckUsable() == nil {
		t.Errorf("slot of database %s looked up from %s: %s %q", db, s.CurrentDatabase, h.Class, h.Reason)
	}
}

// Advisory locks are per database: the leader lock of the same slot name in
// another database is not this outbox's leader.
func TestLeaderHolderFiltersByDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connA, urlA, slot := connectDB(t)
	connB, urlB, _ := connectDB(t)

	leadA := takeLeaderLock(ctx, t, urlA, slot)
	pidA := leadA.PgConn().PID()
	wantA := "backend_pid " + strconv.Itoa(int(pidA)) + " "

	if got := LeaderHolder(ctx, connA, slot); !strings.HasPrefix(got, wantA) {
		t.Errorf("holder in A = %q, want the lock's session %q", got, wantA)
	}
	if got := LeaderHolder(ctx, connB, slot); strings.Contains(got, "pid "+strconv.Itoa(int(pidA))) {
		t.Errorf("holder in B = %q: reports A's lock", got)
	}

	// B can lead its own outbox meanwhile, and is then reported there only.
	leadB := takeLeaderLock(ctx, t, urlB, slot)
	wantB := "backend_pid " + strconv.Itoa(int(leadB.PgConn().PID())) + " "
	if got := LeaderHolder(ctx, connB, slot); !strings.HasPrefix(got, wantB) {
		t.Errorf("holder in B = %q, want %q", got, wantB)
	}
	if got := LeaderHolder(ctx, connA, slot); !strings.HasPrefix(got, wantA) {
		t.Errorf("holder in A = %q, want %q", got, wantA)
	}
}

// takeLeaderLock takes the leader lease's advisory lock for slot on a
// connection of its own, as internal/lease does.
func takeLeaderLock(ctx context.Context, t *testing.T, url, slot string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, "outbox-cdc:"+slot).Scan(&got); err != nil || !got {
		t.Fatalf("take the leader lock of %s: %v %v", slot, got, err)
	}
	return conn
}
