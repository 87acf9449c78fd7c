package sink

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
)

func TestFingerprint(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	base := []any{int64(7), "order.created", ts, "prod", `{"a": 1}`, int64(1), "pending", ts}
	with := func(i int, v any) []any {
		vals := append([]any(nil), base...)
		vals[i] = v
		return vals
	}
	h := new(hasher)
	idx := identityIndexes(outboxRel)
	fp := h.fingerprint(base, idx)
	cases := []struct {
		name   string
		values []any
		same   bool
	}{
		{"same values", append([]any(nil), base...), true},
		{"status changes while delivered", with(6, "failed"), true},
		{"other id", with(0, int64(8)), false},
		{"other event_type", with(1, "order.paid"), false},
		{"created_at a microsecond later", with(7, ts.Add(time.Microsecond)), false},
		{"other payload", with(4, `{"a": 2}`), false},
		{"NULL payload", with(4, nil), false},
		{"other metadata_version", with(5, int64(2)), false},
		{"same text split differently", with(1, "order.createdprod"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := h.fingerprint(c.values, idx)
			if got == 0 {
				t.Fatal("fingerprint 0 is reserved for rows stored without one")
			}
			if (got == fp) != c.same {
				t.Errorf("fingerprint equal = %v, want %v", got == fp, c.same)
			}
		})
	}
	// The stream and the backfill describe the table with different column
	// orders and OIDs: only names matter.
	reordered := &decoder.Relation{Columns: []decoder.Column{
		{Name: "created_at", TypeOID: pgtype.TimestampOID}, {Name: "id", TypeOID: pgtype.Int8OID},
		{Name: "event_type"}, {Name: "event_date_time"}, {Name: "environment"}, {Name: "event_context"}, {Name: "metadata_version"},
	}}
	vals := []any{ts, int64(7), "order.created", ts, "prod", `{"a": 1}`, int64(1)}
	if got := h.fingerprint(vals, identityIndexes(reordered)); got != fp {
		t.Errorf("same row in another column order: fingerprint %x, want %x", got, fp)
	}
}

// Fingerprints are stored in ClickHouse and compared with those of rows
// sent again, possibly by a newer cdc: a change in how they are computed
// would make every row stored before it look like another row with the
// same id. These are the values cdc has always computed.
func TestFingerprintIsStable(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	var num pgtype.Numeric
	if err := num.Scan("12.50"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		values []any
		want   uint64
	}{
		{[]any{int64(7), "order.created", ts, "prod", `{"a": 1}`, int64(1), "pending", ts}, 0xd7d5f1787e94c9f0},
		{[]any{int64(-3), "", ts, nil, []byte(`{}`), 2.5, true, ts}, 0x5c183fc85f5b67e5},
		{[]any{num, false, nil, "x", "y", int64(0), "pending", struct{}{}}, 0x66851ceb0f04b9cb},
	}
	h := new(hasher)
	for _, tt := range tests {
		if got := h.fingerprint(tt.values, identityIndexes(outboxRel)); got != tt.want {
			t.Errorf("fingerprint(%v) = %#x, want %#x", tt.values, got, tt.want)
		}
	}
}

// A new row that reuses an old id (TRUNCATE … RESTART IDENTITY, a re-created
// outbox, a sequence handed out again after a failover) must be delivered,
// not taken for the old row and marked processed without being stored.
func TestReusedIDIsANewRow(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestSink(t)
	old := rowsAt(1000, 1, 2, 3)
	if _, err := s.Write(ctx, old); err != nil {
		t.Fatal(err)
	}
	fresh := rowsAt(5000, 1, 2, 3, 4)
	for i := range fresh {
		fresh[i].Values = append([]any(nil), fresh[i].Values...)
		fresh[i].Values[4] = `{"generation": 2}`
	}
	// The re-created slot's backfill and retry-failed check every id.
	check := reopen(t, s)
	check.opts.CheckEveryRow = true
	res, err := check.Write(ctx, fresh)
	if err != nil {
		t.Fatal(err)
	}
	if res.Inserted != 4 || res.Skipped != 0 {
		t.Errorf("new rows with old ids: inserted %d, skipped %d; want 4 and 0", res.Inserted, res.Skipped)
	}
	// Sent again (a crash before marking), they are recognised.
	res, err = check.Write(ctx, fresh)
	if err != nil || res.Inserted != 0 || res.Skipped != 4 {
		t.Errorf("the same new rows again: %+v, %v; want all 4 skipped", res, err)
	}
	// Rows stored before fingerprints existed (0) are recognised by id.
	if err := s.conn.Exec(ctx, "ALTER TABLE "+s.table()+" UPDATE _fingerprint = 0 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	waitMutations(t, s)
	legacy := rowsAt(9000, 1)
	legacy[0].Values = append([]any(nil), legacy[0].Values...)
	legacy[0].Values[4] = `{"generation": 3}`
	if res, err = check.Write(ctx, legacy); err != nil || res.Skipped != 1 {
		t.Errorf("row with an id stored without a fingerprint: %+v, %v; want it skipped", res, err)
	}
	if n, _ := count(t, s); n != 7 {
		t.Errorf("count %d, want 7 (3 old rows, 4 new)", n)
	}
}

func waitMutations(t *testing.T, s *ClickHouse) {
	t.Helper()
	for range 100 {
		var n uint64
		if err := s.conn.QueryRow(context.Background(), "SELECT count() FROM system.mutations WHERE database = ? AND table = ? AND is_done = 0",
			s.opts.Database, s.opts.Table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("mutation did not finish")
}
