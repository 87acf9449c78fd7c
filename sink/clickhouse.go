// Package sink writes batches of outbox rows into a ClickHouse table, once.
//
// Every row carries its stream position (_lsn: the commit LSN of its source
// transaction, _seq: its position inside that transaction). Positions only
// grow along the stream, so after a restart the sink reads the highest
// position already stored (Recover) and, for re-sent rows at or below it,
// asks ClickHouse which ids are already there before inserting. That keeps
// `count() == uniqExact(id)` without FINAL, even when the daemon died halfway
// through a batch or a transaction.
//
// Rows ClickHouse rejects are isolated by bisecting the batch and returned to
// the caller; everything else is inserted.
package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
)

// Bookkeeping columns the daemon adds to every row.
const (
	ColumnLSN = "_lsn"
	ColumnSeq = "_seq"
)

// Position orders rows along the stream: (commit LSN, row in transaction).
type Position struct {
	LSN uint64
	Seq uint64
}

// Less reports whether p comes before q.
func (p Position) Less(q Position) bool {
	return p.LSN < q.LSN || (p.LSN == q.LSN && p.Seq < q.Seq)
}

// Row is one outbox row to deliver.
type Row struct {
	Pos      Position
	ID       int64
	Relation *decoder.Relation
	Values   []any
}

// Rejected is a row ClickHouse (or the conversion to its column types)
// refused, with the reason.
type Rejected struct {
	ID  int64
	Pos Position
	Err error
}

// Result says what Write did with each row of a batch.
type Result struct {
	Inserted int
	Skipped  int // already in ClickHouse from an earlier attempt or run
	Rejected []Rejected
}

// Options configure the connection.
type Options struct {
	Addr        []string
	Database    string
	Table       string
	Username    string
	Password    string
	DialTimeout time.Duration
	Compression bool
	// DialContext, when set, opens the network connection to one address:
	// TLS (internal/chclient.DialContext), for this connection and the peer
	// connections of the fence alike. Nil dials plain TCP.
	DialContext func(ctx context.Context, addr string) (net.Conn, error)
	// CheckEveryRow makes Write look up every row's id in the whole table
	// before inserting: for re-drives of failed rows and for the backfill of
	// a re-created slot, whose rows may be stored under unrelated positions.
	// It costs a scan of the id column per batch.
	CheckEveryRow bool
	// Fence, when set, is asked before every INSERT and every block of one:
	// an error (a lost lease) stops the write, and nothing more is sent.
	Fence func() error
	// SourceColumns are the names of the outbox table's columns. Open
	// checks that every column of the ClickHouse table with one of these
	// names (or of the outbox's documented columns) has a type the sink
	// converts to, so that a column it cannot fill is a *SchemaError at
	// start, not a failure of every row.
	SourceColumns []string
	// Cluster, when set, makes the sink write to and read from
	// <Table>_local, the replicated table under the Distributed <Table>.
	Cluster string
	// InsertQuorum is QuorumAuto, 0 (off) or how many replicas must have
	// an INSERT before it counts (see replicated.go).
	InsertQuorum        int
	InsertQuorumTimeout time.Duration
	Logger              *slog.Logger
}

// ClickHouse is the sink. It is used by one writer goroutine at a time.
type ClickHouse struct {
	conn driver.Conn
	opts Options
	log  *slog.Logger
	mode Mode
	// peerConns reach every address of Options.Addr one by one, for the
	// in-flight insert fence on a replicated table (see peers).
	peerConns []driver.Conn
	columns   []tableColumn
	// plans is keyed by relation OID: PostgreSQL re-sends a Relation message
	// (a new *decoder.Relation) after every autovacuum or ANALYZE, and a map
	// keyed by pointer would grow with each.
	plans map[uint32]*insertPlan

	// Buffers of the batch being converted, reused by the next one.
	hasher      *hasher
	good        []convertedRow
	busy, spare []*block
	// app is the INSERT kept open by Append, if any (append.go).
	app *appending

	// hwm is the highest position that may already be stored: rows at or
	// below it are checked by id before inserting.
	hwm    Position
	hasHWM bool
	// failedOpen is the last row of the latest INSERT kept open that failed
	// (hasFailedOpen): rows up to it are not appended again but go through
	// Write, which can bisect them if the server rejects one of them.
	// Unlike hwm it survives Recover.
	failedOpen    Position
	hasFailedOpen bool
	// uncertain is set when an insert failed: it may still be running on
	// the server, so the next Write waits for it before checking ids.
	uncertain bool

	// afterFlush, when set (by tests), runs after each data block of an
	// INSERT is sent and the next one appended; its error counts as an
	// append error there.
	afterFlush func() error
}

type tableColumn struct {
	name, typ, defaultKind string
}

type insertPlan struct {
	rel     *decoder.Relation // the relation it was made for
	sql     string
	sources []int // index into Row.Values, or srcLSN / srcSeq / srcFingerprint
	// identity are the positions in Row.Values of the identity columns.
	identity []int
	// fpCol is the index of the _fingerprint column in sources.
	fpCol int
	// newCols make the buffers of the columns of sources (nil for the
	// bookkeeping columns, whose values the sink computes).
	newCols []func() colBuf
	names   []string // the columns, in the INSERT's order
}

// Sources of bookkeeping values in insertPlan.sources (-1 means absent).
const (
	srcLSN         = -2
	srcSeq         = -3
	srcFingerprint = -4
)

// Open connects to ClickHouse and reads the target table's columns.
func Open(ctx context.Context, opts Options) (*ClickHouse, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	conn, err := Dial(opts)
	if err != nil {
		return nil, err
	}
	c, err := OpenConn(ctx, conn, opts)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Dial opens a connection with the sink's settings (address, credentials,
// compression), for readers of the same table such as `cdc verify`.
func Dial(opts Options) (driver.Conn, error) {
	return dial(opts, opts.Addr, opts.DialTimeout)
}

// dial opens a connection to addrs with connOptions.
func dial(opts Options, addrs []string, timeout time.Duration) (driver.Conn, error) {
	conn, err := clickhouse.Open(connOptions(opts, addrs, timeout))
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: open: %w", strings.Join(addrs, ","), err)
	}
	return conn, nil
}

// connOptions are the options of every connection the sink opens, its own
// and those to each replica of the in-flight fence (peers): the same
// credentials, TLS dialer and compression. Options carries its own fields
// rather than internal/chclient's configuration type, so that the package's
// API stands on its own; the daemon passes chclient's TLS dialer in
// DialContext.
func connOptions(opts Options, addrs []string, timeout time.Duration) *clickhouse.Options {
	o := &clickhouse.Options{
		Addr:        addrs,
		Auth:        clickhouse.Auth{Database: opts.Database, Username: opts.Username, Password: opts.Password},
		DialTimeout: timeout,
		DialContext: opts.DialContext,
		ReadTimeout: 5 * time.Minute,
	}
	if opts.Compression {
		o.Compression = &clickhouse.Compression{Method: clickhouse.CompressionLZ4}
	}
	return o
}

// Close closes the connections.
func (c *ClickHouse) Close() error {
	if c.app != nil {
		_ = c.app.batch.Abort()
		c.app = nil
	}
	c.closePeers()
	return c.conn.Close()
}

// Ping checks that the server answers.
func (c *ClickHouse) Ping(ctx context.Context) error {
	if err := c.conn.Ping(ctx); err != nil {
		return fmt.Errorf("clickhouse %s: ping: %w", c.addr(), err)
	}
	return nil
}

func (c *ClickHouse) addr() string { return strings.Join(c.opts.Addr, ",") }

func (c *ClickHouse) table() string {
	return chclient.QuoteIdent(c.opts.Database) + "." + chclient.QuoteIdent(rowTable(c.opts))
}

func (c *ClickHouse) loadColumns(ctx context.Context) error {
	cols, err := readColumns(ctx, c.conn, c.opts.Database, rowTable(c.opts))
	if err != nil {
		return fmt.Errorf("clickhouse %s: %w", c.addr(), err)
	}
	if err := checkColumns(c.opts.Database, rowTable(c.opts), cols, c.opts.SourceColumns); err != nil {
		return err
	}
	c.columns = cols
	c.plans = make(map[uint32]*insertPlan)
	return nil
}

// plan maps a relation's columns onto the table's: every table column that
// the outbox also has, plus _lsn and _seq. Columns computed by ClickHouse
// (MATERIALIZED, ALIAS) are never sent.
func (c *ClickHouse) plan(rel *decoder.Relation) (*insertPlan, error) {
	if p, ok := c.plans[rel.ID]; ok && (p.rel == rel || sameRelation(p.rel, rel)) {
		return p, nil
	}
	p := &insertPlan{rel: rel, identity: identityIndexes(rel)}
	var names []string
	for _, col := range c.columns {
		if col.defaultKind == "MATERIALIZED" || col.defaultKind == "ALIAS" {
			continue
		}
		src := rel.ColumnIndex(col.name)
		switch col.name {
		case ColumnLSN:
			src = srcLSN
		case ColumnSeq:
			src = srcSeq
		case ColumnFingerprint:
			src = srcFingerprint
			p.fpCol = len(p.sources)
		}
		if src == -1 {
			continue // ClickHouse fills its default
		}
		var newCol func() colBuf
		if src >= 0 {
			var err error
			if newCol, err = converterFor(col.typ); err != nil {
				// A column the outbox gained after Open checked the table.
				return nil, &SchemaError{Table: c.table(), Problem: unconvertible(col, err),
					Fix: alterFix(c.table(), []string{"MODIFY COLUMN " + chclient.QuoteIdent(col.name) + " String"})}
			}
		}
		names = append(names, chclient.QuoteIdent(col.name))
		p.sources = append(p.sources, src)
		p.newCols = append(p.newCols, newCol)
		p.names = append(p.names, col.name)
	}
	p.sql = "INSERT INTO " + c.table() + " (" + strings.Join(names, ", ") + ")"
	c.plans[rel.ID] = p
	return p, nil
}

// sameRelation reports whether two Relation messages describe the same
// columns (a re-sent Relation after ANALYZE, or the backfill's and the
// stream's view of one table).
func sameRelation(a, b *decoder.Relation) bool {
	if len(a.Columns) != len(b.Columns) {
		return false
	}
	for i := range a.Columns {
		if a.Columns[i].Name != b.Columns[i].Name || a.Columns[i].TypeOID != b.Columns[i].TypeOID {
			return false
		}
	}
	return true
}

// Recover reloads the table's columns and finds the highest stored position
// at or above floor (the slot's confirmed LSN: nothing below it is re-sent).
func (c *ClickHouse) Recover(ctx context.Context, floor uint64) error {
	c.Abandon()
	if err := c.loadColumns(ctx); err != nil {
		return err
	}
	if err := c.awaitInflightInserts(ctx); err != nil {
		return err
	}
	if err := c.awaitSettledQuorum(ctx); err != nil {
		return err
	}
	c.uncertain = false
	if c.hasFailedOpen && c.failedOpen.LSN < floor {
		c.hasFailedOpen = false // confirmed: never sent again
	}
	q := fmt.Sprintf("SELECT %s, %s FROM %s WHERE %s >= %d ORDER BY %s DESC, %s DESC LIMIT 1",
		ColumnLSN, ColumnSeq, c.table(), ColumnLSN, floor, ColumnLSN, ColumnSeq)
	rows, err := c.conn.Query(c.readContext(ctx), q)
	if err != nil {
		return fmt.Errorf("clickhouse %s: read high-water mark: %w", c.addr(), err)
	}
	defer rows.Close()
	c.hasHWM = false
	for rows.Next() {
		if err := rows.Scan(&c.hwm.LSN, &c.hwm.Seq); err != nil {
			return fmt.Errorf("clickhouse %s: read high-water mark: %w", c.addr(), err)
		}
		c.hasHWM = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("clickhouse %s: read high-water mark: %w", c.addr(), err)
	}
	if c.hasHWM {
		c.log.Info("rows above the slot position are already in ClickHouse; re-sent rows up to here are checked by id",
			"table", c.opts.Table, "hwm_lsn", pglogrepl.LSN(c.hwm.LSN).String(), "hwm_seq", c.hwm.Seq)
	}
	return nil
}

// Write inserts rows (in stream order) that are not already stored. It
// returns an error only when the outcome is unknown or the server is
// unavailable; the caller retries the same rows, and rows that did get in
// are then recognised and skipped.
func (c *ClickHouse) Write(ctx context.Context, rows []Row) (Result, error) {
	var res Result
	if len(rows) == 0 {
		return res, nil
	}
	if c.app != nil {
		return res, fmt.Errorf("clickhouse %s: write while an appended INSERT of %d rows is open (commit it first)", c.addr(), c.app.rows)
	}
	todo := rows
	if c.uncertain {
		if err := c.awaitInflightInserts(ctx); err != nil {
			return res, err
		}
		c.uncertain = false
	}
	if c.opts.CheckEveryRow || (c.hasHWM && !c.hwm.Less(rows[0].Pos)) {
		present, err := c.present(ctx, rows)
		if err != nil {
			return res, err
		}
		if len(present) > 0 {
			todo = make([]Row, 0, len(rows))
			for _, r := range rows {
				if !c.stored(present, r) {
					todo = append(todo, r)
				}
			}
			res.Skipped = len(rows) - len(todo)
		}
	}
	last := rows[len(rows)-1].Pos
	if err := c.insertIsolating(ctx, todo, &res); err != nil {
		var schemaErr *SchemaError
		if errors.As(err, &schemaErr) {
			return Result{}, err // found before anything was sent
		}
		// Part of the batch may be stored, or still being stored: wait for
		// it and check ids when it is retried.
		if !c.hasHWM || c.hwm.Less(last) {
			c.hwm, c.hasHWM = last, true
		}
		c.uncertain = true
		return Result{}, err
	}
	return res, nil
}

// present returns, for each id of rows already in ClickHouse, the
// fingerprints stored with it. Normally only the rows' own positions need
// looking at; CheckEveryRow looks everywhere.
func (c *ClickHouse) present(ctx context.Context, rows []Row) (map[int64][]uint64, error) {
	if err := c.awaitSettledQuorum(ctx); err != nil {
		return nil, err
	}
	present := make(map[int64][]uint64)
	// Ids go in chunks: one IN list of a whole big batch would pass the
	// server's max_query_size (256 KiB) at about 24k ids, and fail on
	// every retry.
	for start := 0; start < len(rows); start += presentChunk {
		if err := c.presentChunk(ctx, rows[start:min(start+presentChunk, len(rows))], present); err != nil {
			return nil, err
		}
	}
	return present, nil
}

// presentChunk is how many ids one lookup query names (about 80 KB of SQL).
const presentChunk = 8192

func (c *ClickHouse) presentChunk(ctx context.Context, rows []Row, present map[int64][]uint64) error {
	lo, hi := rows[0].Pos.LSN, rows[0].Pos.LSN
	var b strings.Builder
	for i, r := range rows {
		lo, hi = min(lo, r.Pos.LSN), max(hi, r.Pos.LSN)
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(r.ID, 10))
	}
	q := fmt.Sprintf("SELECT id, %s FROM %s WHERE %s >= %d AND %s <= %d AND id IN (%s)",
		ColumnFingerprint, c.table(), ColumnLSN, lo, ColumnLSN, hi, b.String())
	if c.opts.CheckEveryRow {
		q = fmt.Sprintf("SELECT id, %s FROM %s WHERE id IN (%s)%s", ColumnFingerprint, c.table(), b.String(), c.dateRange(rows))
	}
	res, err := c.conn.Query(c.readContext(ctx), q)
	if err != nil {
		return fmt.Errorf("clickhouse %s: check stored ids: %w", c.addr(), err)
	}
	defer res.Close()
	for res.Next() {
		var id int64
		var fp uint64
		if err := res.Scan(&id, &fp); err != nil {
			return fmt.Errorf("clickhouse %s: check stored ids: %w", c.addr(), err)
		}
		present[id] = append(present[id], fp)
	}
	if err := res.Err(); err != nil {
		return fmt.Errorf("clickhouse %s: check stored ids: %w", c.addr(), err)
	}
	return nil
}

// dateRange narrows an every-row lookup to the rows' event_date_time range,
// when the table has that column as a DateTime and every row a value: the
// events table is partitioned and sorted by it, so the lookup reads the
// parts of those days instead of the whole id column (a backfill after a
// failover looks up millions of rows). A stored row can only be this row if
// its fingerprint matches, and event_date_time is part of the fingerprint,
// so the range never hides a match. The bounds are whole seconds around
// the values (a DateTime column keeps seconds).
func (c *ClickHouse) dateRange(rows []Row) string {
	const col = "event_date_time"
	typed := false
	for _, tc := range c.columns {
		if tc.name == col && strings.HasPrefix(strings.TrimPrefix(tc.typ, "Nullable("), "DateTime") {
			typed = true
		}
	}
	if !typed {
		return ""
	}
	var lo, hi int64
	for i, r := range rows {
		if r.Relation == nil {
			return ""
		}
		j := r.Relation.ColumnIndex(col)
		if j < 0 || j >= len(r.Values) {
			return ""
		}
		t, ok := r.Values[j].(time.Time)
		if !ok || t.Unix() < 0 || t.Unix() > 1<<32-2 {
			return "" // out of DateTime's range: the row cannot be stored anyway
		}
		if i == 0 || t.Unix() < lo {
			lo = t.Unix()
		}
		if i == 0 || t.Unix() > hi {
			hi = t.Unix()
		}
	}
	return fmt.Sprintf(" AND %s >= toDateTime(%d) AND %s < toDateTime(%d)", col, lo, col, hi+1)
}

// stored reports whether r is among the rows present found: a stored row
// with its id and its fingerprint, or with its id and no fingerprint (stored
// before fingerprints existed).
func (c *ClickHouse) stored(present map[int64][]uint64, r Row) bool {
	fps, ok := present[r.ID]
	if !ok {
		return false
	}
	idx := identityIndexes(r.Relation)
	if p, err := c.plan(r.Relation); err == nil {
		idx = p.identity
	}
	want := c.hasher.fingerprint(r.Values, idx)
	for _, fp := range fps {
		if fp == want || fp == 0 {
			return true
		}
	}
	return false
}

// insertIsolating converts and inserts rows; when the server rejects the
// data it bisects until the offending rows are alone, and reports them.
func (c *ClickHouse) insertIsolating(ctx context.Context, rows []Row, res *Result) error {
	// Convert first: a value that does not fit its column rejects its row
	// without a round trip, and a half-appended batch never reaches the wire.
	// Values go column by column into typed buffers (see colBuf), reused
	// from one batch to the next.
	good := c.good[:0]
	var blk *block
	for _, r := range rows {
		p, err := c.plan(r.Relation)
		if err != nil {
			// The table, not the row, is at fault: every row of the
			// relation would fail alike. Nothing is sent and the batch is
			// retried until the table is fixed; no row is marked failed.
			clear(good)
			c.releaseBlocks()
			return fmt.Errorf("clickhouse %s: %w", c.addr(), err)
		}
		if blk == nil || blk.plan != p {
			blk = c.newBlock(p)
		}
		idx, err := blk.add(r, c.hasher)
		if err != nil {
			res.Rejected = append(res.Rejected, Rejected{ID: r.ID, Pos: r.Pos, Err: err})
			continue
		}
		good = append(good, convertedRow{id: r.ID, pos: r.Pos, blk: blk, idx: idx})
	}
	// Each block (a run of rows sharing a plan, normally the whole batch) is
	// inserted and bisected on its own: a block the server rejects never
	// makes another block's rows go in twice.
	var err error
	for start := 0; start < len(good) && err == nil; {
		end := start + 1
		for end < len(good) && good[end].blk == good[start].blk {
			end++
		}
		err = c.bisect(ctx, good[start:end], res)
		start = end
	}
	clear(good)
	c.good = good[:0]
	c.releaseBlocks()
	return err
}

// block holds converted rows that share an insert plan, column by column.
type block struct {
	plan *insertPlan
	cols []colBuf // the bookkeeping columns are *buf[uint64]
	rows int
	// sizes are the rows' sizes (Row.Size), for cutting data blocks by bytes.
	sizes []int
}

// convertedRow is row idx of a block.
type convertedRow struct {
	id  int64
	pos Position
	blk *block
	idx int
}

// newBlock returns an empty block for p, reusing the buffers of an earlier
// batch when there is one.
func (c *ClickHouse) newBlock(p *insertPlan) *block {
	for i, b := range c.spare {
		if b.plan == p {
			c.spare = append(c.spare[:i], c.spare[i+1:]...)
			c.busy = append(c.busy, b)
			return b
		}
	}
	b := &block{plan: p, cols: make([]colBuf, len(p.sources))}
	for i, newCol := range p.newCols {
		if newCol == nil {
			b.cols[i] = &buf[uint64]{}
			continue
		}
		b.cols[i] = newCol()
	}
	c.busy = append(c.busy, b)
	return b
}

// releaseBlocks empties the blocks of the batch just written (dropping
// their references to its values) and keeps a few for the next one.
func (c *ClickHouse) releaseBlocks() {
	clear(c.spare)
	c.spare = c.spare[:0]
	for _, b := range c.busy {
		for _, col := range b.cols {
			col.truncate(0)
		}
		b.rows, b.sizes = 0, b.sizes[:0]
		if len(c.spare) < 4 {
			c.spare = append(c.spare, b)
		}
	}
	clear(c.busy)
	c.busy = c.busy[:0]
}

// add converts r into the block and returns its index; a value that does
// not fit its column leaves the block as it was.
func (b *block) add(r Row, h *hasher) (int, error) {
	p := b.plan
	for i, src := range p.sources {
		switch src {
		case srcLSN:
			b.push(i, r.Pos.LSN)
		case srcSeq:
			b.push(i, r.Pos.Seq)
		case srcFingerprint:
			b.push(i, h.fingerprint(r.Values, p.identity))
		default:
			if err := b.cols[i].add(r.Values[src]); err != nil {
				for _, col := range b.cols[:i+1] {
					col.truncate(b.rows)
				}
				return 0, fmt.Errorf("column %s: %w", r.Relation.Columns[src].Name, err)
			}
		}
	}
	b.sizes = append(b.sizes, r.Size())
	b.rows++
	return b.rows - 1, nil
}

// push appends a value the sink computes to bookkeeping column i.
func (b *block) push(i int, n uint64) {
	col := b.cols[i].(*buf[uint64])
	col.vals = append(col.vals, n)
}

// chunkEnd is the end of the data block that starts at block row start of
// a run ending at hi: chunkRows rows or chunkBytes bytes, whichever comes
// first, and at least one row.
func (b *block) chunkEnd(start, hi int) int {
	end, size := start+1, b.sizes[start]
	for end < hi && end-start < chunkRows && size+b.sizes[end] <= chunkBytes {
		size += b.sizes[end]
		end++
	}
	return end
}

// bisect inserts rows; when the server rejects them for their data it
// splits them until the offending rows are alone, and reports those. Errors
// that say nothing about the rows are returned for the caller to retry the
// whole batch (Classify).
func (c *ClickHouse) bisect(ctx context.Context, rows []convertedRow, res *Result) error {
	if len(rows) == 0 {
		return nil
	}
	err := c.insertRun(ctx, rows)
	if err == nil {
		res.Inserted += len(rows)
		return nil
	}
	class := Classify(err)
	if class == Retry {
		return err
	}
	var ex *clickhouse.Exception
	if errors.As(err, &ex) {
		// The server failed the INSERT, but it may have stored part of it
		// first (a materialized view that throws runs after the table's
		// own part was written): look before sending any row again.
		var lookErr error
		if rows, lookErr = c.withoutStored(ctx, rows, res); lookErr != nil {
			return lookErr
		}
		if len(rows) == 0 {
			return nil
		}
	}
	if len(rows) == 1 {
		if class == RowData {
			res.Rejected = append(res.Rejected, Rejected{ID: rows[0].id, Pos: rows[0].pos, Err: err})
			return nil
		}
		return err
	}
	if class == TooManyPartitions {
		c.log.Warn("batch spans too many partitions for one INSERT; splitting it", "rows", len(rows), "err", err)
	}
	half := len(rows) / 2
	if err := c.bisect(ctx, rows[:half], res); err != nil {
		return err
	}
	return c.bisect(ctx, rows[half:], res)
}

// chunkBytes bounds the bytes of one data block of an INSERT (see
// chunkRows): the driver copies a block's values into its column buffers,
// encodes and compresses them, and keeps those buffers' capacity per
// connection, so a block of 1024 rows with 64 KB payloads would cost some
// 3 × 64 MB (the memory bound: docs/configuration.md, Memory). Measured with 64 KB rows: 14 MB
// of driver buffers live with 4 MiB blocks. Rows of the usual few hundred
// bytes fill 1024 rows long before 1 MiB.
const chunkBytes = 1 << 20

// withoutStored returns the rows that are not in ClickHouse (by id and
// fingerprint), and counts the others as inserted: a failed INSERT stored
// them.
func (c *ClickHouse) withoutStored(ctx context.Context, rows []convertedRow, res *Result) ([]convertedRow, error) {
	probe := make([]Row, len(rows))
	for i, r := range rows {
		probe[i] = Row{Pos: r.pos, ID: r.id}
	}
	present, err := c.present(ctx, probe)
	if err != nil {
		return nil, err
	}
	if len(present) == 0 {
		return rows, nil
	}
	fps := rows[0].blk.cols[rows[0].blk.plan.fpCol].(*buf[uint64]).vals
	out := make([]convertedRow, 0, len(rows))
	for _, r := range rows {
		if slices.ContainsFunc(present[r.id], func(fp uint64) bool { return fp == fps[r.idx] || fp == 0 }) {
			res.Inserted++
			continue
		}
		out = append(out, r)
	}
	if n := len(rows) - len(out); n > 0 {
		c.log.Warn("a failed INSERT stored some of its rows (a materialized view failing after the table's part was written?); they are not sent again",
			"table", c.opts.Table, "stored", n, "of", len(rows))
	}
	return out, nil
}

// chunkRows is how many rows go into one data block of an INSERT. The server
// squashes the blocks of one INSERT into one part (see oneBlockInsert), so
// a batch still costs one part, while the
// driver holds one chunk at a time, encoded and compressed, instead of the
// whole batch, and reuses its column buffers from chunk to chunk. Each
// INSERT starts with empty columns that grow while the first chunk is
// appended: a small chunk keeps that regrowth small (4096-row chunks
// allocated twice as much per batch in all).
const chunkRows = 1024

// oneBlockInsert keeps the blocks of one INSERT together until it ends. The
// server squashes them only up to min_insert_block_size_rows/_bytes
// (1,048,576 rows and 256 MiB by default, and a profile may set less);
// beyond that it stores a part in the middle of the INSERT, and a block
// rejected after it would leave that part stored while the batch is
// bisected and sent again.
var oneBlockInsert = clickhouse.Settings{
	"min_insert_block_size_rows":  1 << 40,
	"min_insert_block_size_bytes": 1 << 50,
}

// insertRun sends consecutive rows of one block as one INSERT, in data
// blocks of chunkRows rows or chunkBytes bytes: each column's values in one
// Append of its typed slice.
//
// Once a block is sent, a failure must not be bisected: blocks already sent
// may be stored (batch.Close ends the INSERT normally, and ClickHouse 18
// also ends an INSERT whose client disconnects as if it were complete), and
// bisecting would send them again. Such a failure is returned as an
// ordinary error, so Write's caller retries the batch and the rows that got
// in are recognised by id. Errors the server raises fail the whole INSERT,
// blocks already sent included, and are bisected as before.
func (c *ClickHouse) insertRun(ctx context.Context, rows []convertedRow) error {
	blk, lo, hi := rows[0].blk, rows[0].idx, rows[len(rows)-1].idx+1
	if err := c.fence(); err != nil {
		return err
	}
	ctx = c.insertContext(ctx, blk.chunkEnd(lo, hi) < hi)
	batch, err := c.conn.PrepareBatch(ctx, blk.plan.sql)
	if err != nil {
		return fmt.Errorf("clickhouse %s: prepare insert into %s: %w", c.addr(), c.table(), err)
	}
	sent := false
	defer func() {
		if !sent {
			_ = batch.Abort()
		}
	}()
	cols := batch.Columns()
	byColumn := sameColumns(cols, blk.plan.names)
	for start, end := lo, lo; start < hi; start = end {
		end = blk.chunkEnd(start, hi)
		if start > lo {
			if err := c.fence(); err != nil {
				return err
			}
			if err := batch.Flush(); err != nil {
				return fmt.Errorf("clickhouse %s: insert into %s: send rows: %w", c.addr(), c.table(), err)
			}
		}
		err := appendRows(batch, cols, byColumn, blk, rows, start, end)
		if err == nil && start > lo && c.afterFlush != nil {
			err = c.afterFlush()
		}
		if err != nil {
			var de *dataError
			if start > lo && errors.As(err, &de) {
				return fmt.Errorf("clickhouse %s: insert into %s after %d rows were sent: %w", c.addr(), c.table(), start-lo, de.err)
			}
			return err
		}
	}
	sent = true // Send ends the INSERT or releases the connection itself
	if err := batch.Send(); err != nil {
		return fmt.Errorf("clickhouse %s: insert %d rows into %s: %w", c.addr(), len(rows), c.table(), err)
	}
	return nil
}

// fence asks Options.Fence whether this process may still write.
func (c *ClickHouse) fence() error {
	if c.opts.Fence == nil {
		return nil
	}
	if err := c.opts.Fence(); err != nil {
		return fmt.Errorf("clickhouse %s: insert into %s not sent: %w", c.addr(), c.table(), err)
	}
	return nil
}

// appendRows appends rows start..end-1 of blk (rows begins at blk row
// rows[0].idx) to batch: column by column when byColumn, else row by row
// (a driver that does not show its columns).
func appendRows(batch driver.Batch, cols []column.Interface, byColumn bool, blk *block, rows []convertedRow, start, end int) error {
	lo := rows[0].idx
	if byColumn {
		for i, col := range cols {
			if err := blk.cols[i].appendTo(col, start, end); err != nil {
				return &dataError{fmt.Errorf("clickhouse: append column %s: %w", blk.plan.names[i], err)}
			}
		}
		return nil
	}
	vals := make([]any, len(blk.cols))
	for i := start; i < end; i++ {
		for j, col := range blk.cols {
			vals[j] = col.value(i)
		}
		if err := batch.Append(vals...); err != nil {
			return &dataError{fmt.Errorf("clickhouse: append row id %d: %w", rows[i-lo].id, err)}
		}
	}
	return nil
}

// sameColumns reports whether a batch's columns are the plan's, in order.
func sameColumns(cols []column.Interface, names []string) bool {
	if len(cols) != len(names) {
		return false
	}
	for i, col := range cols {
		if col == nil || col.Name() != names[i] {
			return false
		}
	}
	return true
}

// dataError marks an error caused by the rows themselves.
type dataError struct{ err error }

func (e *dataError) Error() string { return e.err.Error() }
func (e *dataError) Unwrap() error { return e.err }
