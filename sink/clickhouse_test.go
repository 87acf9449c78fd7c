package sink

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

var outboxRel = &decoder.Relation{Namespace: "public", Name: "event_outbox", Columns: []decoder.Column{
	{Name: "id", TypeOID: pgtype.Int8OID}, {Name: "event_type", TypeOID: pgtype.VarcharOID},
	{Name: "event_date_time", TypeOID: pgtype.TimestampOID}, {Name: "environment", TypeOID: pgtype.VarcharOID},
	{Name: "event_context", TypeOID: pgtype.JSONBOID}, {Name: "metadata_version", TypeOID: pgtype.Int8OID},
	{Name: "status", TypeOID: pgtype.VarcharOID}, {Name: "created_at", TypeOID: pgtype.TimestampOID},
}}

func rowsAt(lsn uint64, ids ...int64) []Row {
	var out []Row
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, id := range ids {
		out = append(out, Row{Pos: Position{LSN: lsn, Seq: uint64(i)}, ID: id, Relation: outboxRel,
			Values: []any{id, "t", ts, "test", `{"a": 1}`, int64(1), "pending", ts}})
	}
	return out
}

func openTestSink(t *testing.T) (*ClickHouse, string) {
	t.Helper()
	addr, db := testenv.ClickHouseAddr(t), testenv.NewClickHouseDB(t)
	ctx := context.Background()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := migrations.ApplyClickHouse(ctx, conn, migrations.ClickHouse{Database: db, Table: "events"}); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, Options{Addr: []string{addr}, Database: db, Table: "events"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, db
}

func reopen(t *testing.T, s *ClickHouse) *ClickHouse {
	t.Helper()
	n, err := Open(context.Background(), s.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func count(t *testing.T, s *ClickHouse) (n, uniq uint64) {
	t.Helper()
	if err := s.conn.QueryRow(context.Background(), "SELECT count(), uniqExact(id) FROM "+s.table()).Scan(&n, &uniq); err != nil {
		t.Fatal(err)
	}
	return n, uniq
}

// After a restart, rows at or below the stored high-water mark are checked
// by id: a batch that was partly stored is completed, not duplicated.
func TestRecoverSkipsStoredRows(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestSink(t)
	all := rowsAt(1000, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	if _, err := s.Write(ctx, all[:4]); err != nil {
		t.Fatal(err)
	}
	var lsn, seq uint64
	if err := s.conn.QueryRow(ctx, "SELECT max(_lsn), max(_seq) FROM "+s.table()).Scan(&lsn, &seq); err != nil {
		t.Fatal(err)
	}
	if lsn != 1000 || seq != 3 {
		t.Fatalf("stored position (%d, %d), want (1000, 3)", lsn, seq)
	}

	// A new process: the stream re-sends from the confirmed LSN (900).
	s2 := reopen(t, s)
	if err := s2.Recover(ctx, 900); err != nil {
		t.Fatal(err)
	}
	res, err := s2.Write(ctx, all)
	if err != nil {
		t.Fatal(err)
	}
	if res.Inserted != 6 || res.Skipped != 4 {
		t.Errorf("inserted %d skipped %d, want 6 and 4", res.Inserted, res.Skipped)
	}
	more := rowsAt(2000, 11, 12)
	if res, err = s2.Write(ctx, more); err != nil || res.Inserted != 2 || res.Skipped != 0 {
		t.Errorf("rows above the mark: %+v, %v", res, err)
	}
	if n, u := count(t, s2); n != 12 || u != 12 {
		t.Errorf("count %d uniq %d, want 12", n, u)
	}

	// A floor above every stored row means nothing stored can come again.
	s3 := reopen(t, s)
	if err := s3.Recover(ctx, 3000); err != nil {
		t.Fatal(err)
	}
	if s3.hasHWM {
		t.Errorf("high-water mark found above floor 3000: %+v", s3.hwm)
	}
}

func TestWriteIsolatesRejectedRows(t *testing.T) {
	ctx := context.Background()
	s, db := openTestSink(t)
	if err := s.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE `%s`.events ADD COLUMN _guard UInt8 MATERIALIZED throwIf(id %% 7 = 0)", db)); err != nil {
		t.Fatal(err)
	}
	if err := s.Recover(ctx, 0); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for i := int64(1); i <= 30; i++ {
		ids = append(ids, i)
	}
	rows := rowsAt(500, ids...)
	rows[0].Values[2] = time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC) // DateTime cannot hold it
	res, err := s.Write(ctx, rows)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int64]bool{}
	for _, r := range res.Rejected {
		got[r.ID] = true
		if r.Err == nil {
			t.Errorf("row %d rejected without a reason", r.ID)
		}
	}
	want := map[int64]bool{1: true, 7: true, 14: true, 21: true, 28: true}
	if len(got) != len(want) {
		t.Errorf("rejected %v, want %v", got, want)
	}
	for id := range want {
		if !got[id] {
			t.Errorf("row %d not rejected", id)
		}
	}
	if res.Inserted != 25 {
		t.Errorf("inserted %d, want 25", res.Inserted)
	}
	if n, _ := count(t, s); n != 25 {
		t.Errorf("count %d, want 25", n)
	}
}

func TestWriteRetriesAfterOutageWithoutDuplicates(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestSink(t)
	rows := rowsAt(700, 1, 2, 3)
	// An insert whose outcome is unknown (here: it did land) must be
	// checked by id when retried.
	if _, err := s.Write(ctx, rows); err != nil {
		t.Fatal(err)
	}
	s.hwm, s.hasHWM = rows[len(rows)-1].Pos, true
	res, err := s.Write(ctx, rows)
	if err != nil || res.Skipped != 3 || res.Inserted != 0 {
		t.Errorf("retry: %+v, %v; want 3 skipped", res, err)
	}
}

func seqIDs(from, n int64) []int64 {
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = from + int64(i)
	}
	return ids
}

// A batch larger than one data block is still one INSERT: the server
// stores it as one part.
func TestChunkedInsertIsOnePart(t *testing.T) {
	ctx := context.Background()
	s, db := openTestSink(t)
	if err := s.conn.Exec(ctx, fmt.Sprintf("SYSTEM STOP MERGES `%s`.events", db)); err != nil {
		t.Fatal(err)
	}
	n := int64(3*chunkRows + 5)
	res, err := s.Write(ctx, rowsAt(100, seqIDs(1, n)...))
	if err != nil || res.Inserted != int(n) {
		t.Fatalf("write: %+v, %v", res, err)
	}
	var parts uint64
	if err := s.conn.QueryRow(ctx, "SELECT count() FROM system.parts WHERE database = ? AND table = 'events' AND active", db).Scan(&parts); err != nil {
		t.Fatal(err)
	}
	if parts != 1 {
		t.Errorf("%d parts for one batch of %d rows, want 1", parts, n)
	}
	if c, u := count(t, s); c != uint64(n) || u != uint64(n) {
		t.Errorf("count %d uniq %d, want %d", c, u, n)
	}
}

// A row the server rejects in a later data block fails the whole INSERT,
// blocks already sent included: bisecting then stores every other row
// exactly once. The caller's context asks the server to store a part every
// block (as a profile with a small min_insert_block_size_rows would); the
// INSERT must override it, or the first blocks would be stored twice.
func TestRejectedRowInALaterBlock(t *testing.T) {
	ctx := clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{
		"min_insert_block_size_rows": chunkRows, "min_insert_block_size_bytes": 1,
	}))
	s, db := openTestSink(t)
	bad := int64(2*chunkRows + 10)
	if err := s.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE `%s`.events ADD COLUMN _guard UInt8 MATERIALIZED throwIf(id = %d)", db, bad)); err != nil {
		t.Fatal(err)
	}
	if err := s.Recover(ctx, 0); err != nil {
		t.Fatal(err)
	}
	n := int64(3 * chunkRows)
	res, err := s.Write(ctx, rowsAt(100, seqIDs(1, n)...))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rejected) != 1 || res.Rejected[0].ID != bad || res.Inserted != int(n-1) {
		t.Fatalf("inserted %d, rejected %v; want %d inserted and row %d rejected", res.Inserted, res.Rejected, n-1, bad)
	}
	if c, u := count(t, s); c != uint64(n-1) || u != uint64(n-1) {
		t.Errorf("count %d uniq %d, want %d", c, u, n-1)
	}
}

// An INSERT that fails on the client after some data blocks were sent may
// have stored them (ClickHouse 18 ends an INSERT whose client disconnects as
// if it were complete): the failure is not bisected, and the retry stores
// every row exactly once.
func TestFailedInsertAfterAFlushIsRetriedByID(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestSink(t)
	flushes := 0
	s.afterFlush = func() error {
		if flushes++; flushes == 2 {
			return &dataError{fmt.Errorf("injected failure after %d data blocks", flushes)}
		}
		return nil
	}
	n := int64(3*chunkRows + 1)
	rows := rowsAt(100, seqIDs(1, n)...)
	res, err := s.Write(ctx, rows)
	if err == nil || Classify(err) != Retry {
		t.Fatalf("write after an injected failure: %+v, %v; want an error that is not bisected", res, err)
	}
	s.afterFlush = nil
	res, err = s.Write(ctx, rows)
	if err != nil || res.Inserted+res.Skipped != int(n) || len(res.Rejected) != 0 {
		t.Fatalf("retry: %+v, %v", res, err)
	}
	t.Logf("the failed INSERT had stored %d rows", res.Skipped)
	if c, u := count(t, s); c != uint64(n) || u != uint64(n) {
		t.Errorf("count %d uniq %d, want %d", c, u, n)
	}
}
