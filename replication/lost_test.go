package replication

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// A slot the server really invalidated (its WAL removed past
// max_slot_wal_keep_size) is lost for `cdc run` and `cdc status` alike, with
// the columns of the server's version: wal_status 'lost', conflicting true
// on 16 and false from 17, invalidation_reason wal_removed (17+). It needs a private server:
// the setting would invalidate other tests' slots on the shared one.
func TestServerInvalidatedSlotIsLost(t *testing.T) {
	srv := testenv.StartPrivate(t, "lostclass")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, srv.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, q := range []string{`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`, `ALTER SYSTEM SET max_wal_size = '32MB'`,
		`ALTER SYSTEM SET min_wal_size = '32MB'`, `SELECT pg_reload_conf()`,
		`SELECT pg_create_logical_replication_slot('lost', 'pgoutput')`, `CREATE TABLE filler (x text)`} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var s SlotInfo
	for i := 0; ; i++ {
		if s, err = LookupSlot(ctx, conn, "lost"); err != nil {
			t.Fatal(err)
		}
		if s.WALStatus == "lost" || i == 30 {
			break
		}
		for _, q := range []string{`INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 4000)`, `SELECT pg_switch_wal()`, `CHECKPOINT`} {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("server %d: wal_status %q conflicting %v invalidation_reason %v", s.ServerVersionNum, s.WALStatus, s.Conflicting, s.InvalidationReason)
	h := s.Health()
	if h.Class != SlotLost || !errors.Is(s.CheckUsable(), ErrSlotLost) {
		t.Fatalf("slot with wal_status %q: %s %q, want lost", s.WALStatus, h.Class, h.Reason)
	}
	// PostgreSQL 16 reports every invalidated logical slot as conflicting;
	// 17 keeps it for conflicts with recovery (measured: 16.14 says true here).
	if s.ServerVersionNum >= pg17 && (s.Conflicting == nil || *s.Conflicting) {
		t.Errorf("conflicting %v, want false (WAL removed, not a conflict with recovery)", s.Conflicting)
	}
	if s.ServerVersionNum >= pg16 && s.ServerVersionNum < pg17 && (s.Conflicting == nil || !*s.Conflicting) {
		t.Errorf("conflicting %v, want true (PostgreSQL 16 marks every invalidated logical slot)", s.Conflicting)
	}
	if s.ServerVersionNum >= pg17 && (s.InvalidationReason == nil || *s.InvalidationReason != "wal_removed") {
		t.Errorf("invalidation_reason %v, want wal_removed", s.InvalidationReason)
	}
}
