package sink

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/ClickHouse/ch-go/compress"
	chproto "github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/outbox-cdc/outbox-cdc/decoder"
)

// Micro-benchmarks of batch encoding: a batch of decoded outbox rows goes
// through Write (conversion to the table's column types, the columns of a
// clickhouse-go block) and is encoded in the native format and compressed
// with LZ4 as the connection does before sending; only the network is left
// out. Run with
//
//	go test -run '^$' -bench . -benchmem ./sink
//
// ns/row and allocs/row are per row of the batch.

// encodingConn is a driver.Conn whose batches encode and compress their
// block on Send and throw it away.
type encodingConn struct {
	driver.Conn // only PrepareBatch is used
	types       map[string]string
	buf         chproto.Buffer
	lz4         *compress.Writer
	sent        int
}

func (e *encodingConn) PrepareBatch(_ context.Context, query string, _ ...driver.PrepareBatchOption) (driver.Batch, error) {
	sc := column.ServerContext{Revision: 54412, VersionMajor: 18, VersionMinor: 16, VersionPatch: 1, Timezone: time.UTC}
	b := &encodingBatch{conn: e, block: &proto.Block{ServerContext: &sc}}
	for _, name := range benchColumns {
		if err := b.block.AddColumn(name, column.Type(e.types[name])); err != nil {
			return nil, err
		}
	}
	return b, nil
}

type encodingBatch struct {
	driver.Batch
	conn  *encodingConn
	block *proto.Block
}

func (b *encodingBatch) Append(v ...any) error { return b.block.Append(v...) }
func (b *encodingBatch) Columns() []column.Interface {
	return append([]column.Interface(nil), b.block.Columns...)
}
func (b *encodingBatch) Close() error { return nil }
func (b *encodingBatch) Abort() error { return nil }

// Flush encodes the block so far, as the driver sends it, and empties it.
func (b *encodingBatch) Flush() error {
	e := b.conn
	e.buf.Reset()
	if err := b.block.Encode(&e.buf, 54412); err != nil { // ClickHouse 18.16's revision
		return err
	}
	if err := e.lz4.Compress(e.buf.Buf); err != nil {
		return err
	}
	e.sent += b.block.Rows()
	b.block.Reset()
	return nil
}
func (b *encodingBatch) Send() error { return b.Flush() }

// benchColumns are the events table's columns as `cdc migrate` creates them
// on ClickHouse 18 (the sink sends all but _inserted_at).
var benchColumns = []string{"id", "event_type", "event_date_time", "environment", "event_context", "metadata_version", "created_at", "_lsn", "_seq", "_fingerprint"}

var benchTypes = map[string]string{
	"id": "Int64", "event_type": "String", "event_date_time": "DateTime", "environment": "String",
	"event_context": "String", "metadata_version": "Int64", "created_at": "DateTime",
	"_lsn": "UInt64", "_seq": "UInt64", "_fingerprint": "UInt64", "_inserted_at": "DateTime",
}

// benchSink is a sink on an encodingConn, with the table's columns as
// loadColumns would read them.
func benchSink(b *testing.B, types map[string]string) (*ClickHouse, *encodingConn) {
	conn := &encodingConn{types: types, lz4: compress.NewWriter(compress.LevelZero, compress.LZ4)}
	c := &ClickHouse{conn: conn, opts: Options{Addr: []string{"bench"}, Database: "bench", Table: "events"}, plans: map[uint32]*insertPlan{}, hasher: new(hasher)}
	for _, name := range append(benchColumns, "_inserted_at") {
		col := tableColumn{name: name, typ: types[name]}
		if name == "_inserted_at" {
			col.defaultKind = "DEFAULT"
		}
		c.columns = append(c.columns, col)
	}
	return c, conn
}

// benchRows are decoded outbox rows as the stream delivers them.
func benchRows(n int) []Row {
	rel := &decoder.Relation{ID: 1, Namespace: "public", Name: "event_outbox"}
	for _, name := range []string{"id", "event_type", "event_date_time", "environment", "event_context", "metadata_version", "status", "created_at", "updated_at", "last_error", "attempts"} {
		rel.Columns = append(rel.Columns, decoder.Column{Name: name})
	}
	ts := time.Date(2026, 11, 27, 23, 41, 7, 123456000, time.UTC)
	rows := make([]Row, n)
	for i := range rows {
		id := int64(1_000_000 + i)
		rows[i] = Row{Pos: Position{LSN: 0x1_0000_0000, Seq: uint64(i)}, ID: id, Relation: rel, Values: []any{
			id, "order.created", ts, "production",
			fmt.Sprintf(`{"sku": "SKU-%06d", "note": "benchmark payload of a realistic size", "amount": 123.45, "user_id": 12345, "currency": "EUR", "order_id": %d}`, i, id),
			int64(2), "pending", ts, ts, nil, int64(0)}}
	}
	return rows
}

func benchWrite(b *testing.B, rows int, types map[string]string) {
	c, conn := benchSink(b, types)
	batch := benchRows(rows)
	ctx := context.Background()
	var before, after runtime.MemStats
	b.ReportAllocs()
	runtime.ReadMemStats(&before)
	for b.Loop() {
		res, err := c.Write(ctx, batch)
		if err != nil || res.Inserted != rows {
			b.Fatalf("Write: %+v, %v", res, err)
		}
	}
	runtime.ReadMemStats(&after)
	n := float64(b.N) * float64(rows)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/row")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/row")
	if conn.sent != b.N*rows {
		b.Fatalf("sent %d rows, want %d", conn.sent, b.N*rows)
	}
}

// BenchmarkWriteBatch: Write of a batch into the ClickHouse 18 table.
func BenchmarkWriteBatch(b *testing.B) {
	for _, rows := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("rows=%d", rows), func(b *testing.B) { benchWrite(b, rows, benchTypes) })
	}
}

// BenchmarkWriteBatchModern: the same into the table `cdc migrate` creates
// on ClickHouse 24+ (LowCardinality, DateTime64).
func BenchmarkWriteBatchModern(b *testing.B) {
	types := map[string]string{}
	for k, v := range benchTypes {
		types[k] = v
	}
	types["event_type"], types["environment"] = "LowCardinality(String)", "LowCardinality(String)"
	types["event_date_time"], types["created_at"], types["_inserted_at"] = "DateTime64(6, 'UTC')", "DateTime64(6, 'UTC')", "DateTime64(6, 'UTC')"
	benchWrite(b, 1000, types)
}

// BenchmarkWriteBatchRowwise is the row-by-row way for comparison: the
// rows converted as Write does, then each row's values in a []any appended
// with Append (the path of a driver that does not show its columns).
func BenchmarkWriteBatchRowwise(b *testing.B) {
	c, conn := benchSink(b, benchTypes)
	rows := benchRows(1000)
	ctx := context.Background()
	var before, after runtime.MemStats
	b.ReportAllocs()
	runtime.ReadMemStats(&before)
	for b.Loop() {
		p, err := c.plan(rows[0].Relation)
		if err != nil {
			b.Fatal(err)
		}
		blk := c.newBlock(p)
		for _, r := range rows {
			if _, err := blk.add(r, c.hasher); err != nil {
				b.Fatal(err)
			}
		}
		batch, _ := conn.PrepareBatch(ctx, p.sql)
		for i := range rows {
			vals := make([]any, len(blk.cols))
			for j, col := range blk.cols {
				vals[j] = col.value(i)
			}
			if err := batch.Append(vals...); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Send(); err != nil {
			b.Fatal(err)
		}
		c.releaseBlocks()
	}
	runtime.ReadMemStats(&after)
	n := float64(b.N) * 1000
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/row")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/row")
}
