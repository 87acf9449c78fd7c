package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// Outbox is a migrated outbox: a fresh PostgreSQL database with event_outbox
// and its publication, and a fresh ClickHouse database with the events table.
type Outbox struct {
	t      testing.TB
	PGURL  string
	CHAddr string
	CHDB   string
	// Slot is the replication slot tests should use: slots are shared by
	// the whole server, so each outbox gets its own (named after its
	// database).
	Slot string
	PG   *pgxpool.Pool
	CH   driver.Conn
}

// NewOutbox creates and migrates both sides on the shared test servers.
func NewOutbox(t testing.TB) *Outbox {
	t.Helper()
	pgURL, chAddr, chDB := NewPostgresDB(t), ClickHouseAddr(t), NewClickHouseDB(t)
	migrateOutbox(t, pgURL, chAddr, chDB)
	return OpenOutbox(t, pgURL, chAddr, chDB)
}

// Outbox migrates both sides on private servers (PostgreSQL database "cdc",
// ClickHouse database "default") and connects to them. Its slot is
// "cdc_outbox", the daemon's default: the server is the test's own.
func (s *Servers) Outbox(t testing.TB) *Outbox {
	t.Helper()
	migrateOutbox(t, s.PGURL, s.CHAddr, "default")
	o := OpenOutbox(t, s.PGURL, s.CHAddr, "default")
	o.Slot = "cdc_outbox"
	return o
}

// migrateOutbox makes event_outbox and its publication in pgURL's database
// and the events table in ClickHouse database chDB, as `cdc migrate` does.
func migrateOutbox(t testing.TB, pgURL, chAddr, chDB string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatalf("connect postgres: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := migrations.ApplyPostgres(ctx, conn, migrations.Postgres{Table: "public.event_outbox", Publication: "cdc_outbox"}); err != nil {
		t.Fatalf("migrate postgres: %v", err)
	}
	ch, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		t.Fatalf("open clickhouse: %v", err)
	}
	defer ch.Close()
	if _, err := migrations.ApplyClickHouse(ctx, ch, migrations.ClickHouse{Database: chDB, Table: "events"}); err != nil {
		t.Fatalf("migrate clickhouse: %v", err)
	}
}

// OpenOutbox connects to an outbox that is already migrated.
func OpenOutbox(t testing.TB, pgURL, chAddr, chDB string) *Outbox {
	t.Helper()
	o := &Outbox{t: t, PGURL: pgURL, CHAddr: chAddr, CHDB: chDB}
	if u, err := url.Parse(pgURL); err == nil {
		o.Slot = strings.TrimPrefix(u.Path, "/")
	}
	var err error
	o.CH, err = clickhouse.Open(&clickhouse.Options{Addr: []string{o.CHAddr}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open clickhouse: %v", err)
	}
	t.Cleanup(func() { o.CH.Close() })
	cfg, err := pgxpool.ParseConfig(o.PGURL)
	if err != nil {
		t.Fatalf("postgres url: %v", err)
	}
	cfg.MaxConns = 16
	o.PG, err = pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("postgres pool: %v", err)
	}
	t.Cleanup(o.PG.Close)
	return o
}

// Config returns a daemon configuration for this outbox, with short
// intervals suited to tests.
func (o *Outbox) Config() *config.Config {
	c := config.Default()
	c.Postgres.URL = o.PGURL
	c.Postgres.Slot = o.Slot
	c.ClickHouse.Addr = []string{o.CHAddr}
	c.ClickHouse.Database = o.CHDB
	c.HTTP.Listen = "127.0.0.1:0"
	c.Batch.FlushInterval = 100 * time.Millisecond
	c.Retry.InitialBackoff = 50 * time.Millisecond
	c.Retry.MaxBackoff = time.Second
	c.Replication.StandbyRetry = 200 * time.Millisecond
	c.Replication.StatusInterval = time.Second
	c.Shutdown.Grace = 30 * time.Second
	return c
}

// Env returns CDC_* variables that point the cdc binary at this outbox.
func (o *Outbox) Env() []string {
	return append([]string{
		"CDC_POSTGRES_URL=" + o.PGURL,
		"CDC_POSTGRES_SLOT=" + o.Slot,
		"CDC_CLICKHOUSE_ADDR=" + o.CHAddr,
		"CDC_CLICKHOUSE_DATABASE=" + o.CHDB,
	}, FastEnv()...)
}

// FastEnv returns the CDC_* variables that make the cdc binary react in
// test time (Config's short intervals) and log JSON. In a process's
// environment the last entry of a key wins: a test overrides one by
// appending it after these.
func FastEnv() []string {
	return []string{
		"CDC_BATCH_FLUSH_INTERVAL=100ms",
		"CDC_RETRY_INITIAL_BACKOFF=50ms",
		"CDC_RETRY_MAX_BACKOFF=1s",
		"CDC_REPLICATION_STANDBY_RETRY=200ms",
		"CDC_REPLICATION_STATUS_INTERVAL=1s",
		"CDC_LOG_FORMAT=json",
	}
}

// Insert commits (or rolls back) one transaction of n events and returns
// their ids.
func (o *Outbox) Insert(ctx context.Context, n int, commit bool) ([]int64, error) {
	return o.InsertTagged(ctx, "", n, commit)
}

// InsertTagged is Insert with token, when not empty, in each row's
// event_context.txn: a transaction whose commit failed can be looked for
// afterwards. The ids are returned even then.
func (o *Outbox) InsertTagged(ctx context.Context, token string, n int, commit bool) ([]int64, error) {
	var tag *string // NULL: no txn key at all
	if token != "" {
		tag = &token
	}
	tx, err := o.PG.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
	  SELECT 'order.created', now(), 'test', jsonb_build_object('n', g, 'note', 'événement ✓', 'amount', 12345678901234567890.5)
	           || jsonb_strip_nulls(jsonb_build_object('txn', $2::text)), g
	  FROM generate_series(1, $1) g RETURNING id`, n, tag)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, err
	}
	if !commit {
		return ids, tx.Rollback(ctx)
	}
	return ids, tx.Commit(ctx)
}

// MustInsert is Insert that fails the test on error.
func (o *Outbox) MustInsert(n int, commit bool) []int64 {
	o.t.Helper()
	ids, err := o.Insert(context.Background(), n, commit)
	if err != nil {
		o.t.Fatalf("insert %d rows: %v", n, err)
	}
	return ids
}

// CHCount returns count() and uniqExact(id) of the events table.
func (o *Outbox) CHCount() (count, uniq uint64) {
	o.t.Helper()
	err := o.CH.QueryRow(context.Background(), fmt.Sprintf("SELECT count(), uniqExact(id) FROM `%s`.events", o.CHDB)).Scan(&count, &uniq)
	if err != nil {
		o.t.Fatalf("count clickhouse rows: %v", err)
	}
	return count, uniq
}

// WaitCH waits until ClickHouse holds at least want rows.
func (o *Outbox) WaitCH(want uint64, timeout time.Duration) {
	o.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n, _ := o.CHCount()
		if n >= want {
			return
		}
		if time.Now().After(deadline) {
			o.t.Fatalf("ClickHouse has %d rows after %s, want %d", n, timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// CHIDs returns every id in ClickHouse, sorted, duplicates included.
func (o *Outbox) CHIDs() []int64 {
	o.t.Helper()
	rows, err := o.CH.Query(context.Background(), fmt.Sprintf("SELECT id FROM `%s`.events ORDER BY id", o.CHDB))
	if err != nil {
		o.t.Fatalf("read clickhouse ids: %v", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			o.t.Fatalf("read clickhouse ids: %v", err)
		}
		ids = append(ids, id)
	}
	return ids
}

// StatusCounts returns the outbox's rows per status.
func (o *Outbox) StatusCounts() map[string]int64 {
	o.t.Helper()
	rows, err := o.PG.Query(context.Background(), `SELECT status, count(*) FROM event_outbox GROUP BY status`)
	if err != nil {
		o.t.Fatalf("count statuses: %v", err)
	}
	out := map[string]int64{}
	for rows.Next() {
		var s string
		var n int64
		if err := rows.Scan(&s, &n); err != nil {
			o.t.Fatalf("count statuses: %v", err)
		}
		out[s] = n
	}
	return out
}

// AssertExactlyOnce checks ClickHouse holds exactly the committed ids, each
// once, none of the rolled-back ones, and that the outbox marks them all
// processed.
func (o *Outbox) AssertExactlyOnce(committed, rolledBack []int64) {
	o.t.Helper()
	got := o.CHIDs()
	want := append([]int64(nil), committed...)
	sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
	count, uniq := o.CHCount()
	if count != uniq || count != uint64(len(want)) {
		o.t.Errorf("ClickHouse count()=%d uniqExact(id)=%d, committed rows=%d", count, uniq, len(want))
	}
	dups := 0
	for i := 1; i < len(got); i++ {
		if got[i] == got[i-1] {
			dups++
		}
	}
	if dups > 0 {
		o.t.Errorf("%d duplicate ids in ClickHouse", dups)
	}
	have := make(map[int64]bool, len(got))
	for _, id := range got {
		have[id] = true
	}
	var missing []string
	for _, id := range want {
		if !have[id] {
			missing = append(missing, fmt.Sprint(id))
		}
	}
	if len(missing) > 0 {
		o.t.Errorf("%d committed ids missing from ClickHouse, e.g. %s", len(missing), strings.Join(missing[:min(10, len(missing))], ","))
	}
	for _, id := range rolledBack {
		if have[id] {
			o.t.Errorf("rolled-back id %d is in ClickHouse", id)
			break
		}
	}
	counts := o.StatusCounts()
	if counts["processed"] != int64(len(want)) || len(counts) != 1 {
		o.t.Errorf("outbox statuses %v, want all %d processed", counts, len(want))
	}
}

// Producer commits transactions of random size, rolling back about one in
// ten, until ctx ends; it records which ids committed.
type Producer struct {
	Committed, RolledBack []int64
	Txns                  int
}

// Produce runs one producer.
func (o *Outbox) Produce(ctx context.Context, maxRows int, pause time.Duration) (*Producer, error) {
	p := &Producer{}
	for ctx.Err() == nil {
		commit := rand.IntN(10) != 0
		ids, err := o.Insert(context.Background(), 1+rand.IntN(maxRows), commit)
		if err != nil {
			return p, err
		}
		if commit {
			p.Committed = append(p.Committed, ids...)
		} else {
			p.RolledBack = append(p.RolledBack, ids...)
		}
		p.Txns++
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	return p, nil
}

// SlotLag returns pg_current_wal_lsn() - confirmed_flush_lsn of slot, in bytes.
func (o *Outbox) SlotLag(slot string) (int64, error) {
	var lag int64
	err := o.PG.QueryRow(context.Background(), `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
	  FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&lag)
	return lag, err
}

// AssertExactlyOnceAllowFailed is AssertExactlyOnce for an outbox where the
// failed rows are still failed (and absent from ClickHouse).
func (o *Outbox) AssertExactlyOnceAllowFailed(delivered, failed []int64) {
	o.t.Helper()
	got := o.CHIDs()
	count, uniq := o.CHCount()
	if count != uniq || count != uint64(len(delivered)) {
		o.t.Errorf("ClickHouse count()=%d uniqExact(id)=%d, want %d", count, uniq, len(delivered))
	}
	have := make(map[int64]bool, len(got))
	for _, id := range got {
		have[id] = true
	}
	for _, id := range delivered {
		if !have[id] {
			o.t.Errorf("id %d missing from ClickHouse", id)
			break
		}
	}
	for _, id := range failed {
		if have[id] {
			o.t.Errorf("failed id %d is in ClickHouse", id)
		}
	}
	counts := o.StatusCounts()
	if counts["processed"] != int64(len(delivered)) || counts["failed"] != int64(len(failed)) {
		o.t.Errorf("outbox statuses %v, want %d processed and %d failed", counts, len(delivered), len(failed))
	}
}
