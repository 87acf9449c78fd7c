package sink

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// The in-flight fence's connections to each replica are made like the
// sink's own: through Options.DialContext (clickhouse.tls), with the same
// credentials and compression.
func TestReplicaProbesDialLikeTheSink(t *testing.T) {
	ctx := context.Background()
	addr := testenv.ClickHouseAddr(t)
	var mu sync.Mutex
	dialed := 0
	opts := Options{Addr: []string{addr, addr}, Database: testenv.NewClickHouseDB(t), Table: "events", Compression: true,
		DialContext: func(ctx context.Context, a string) (net.Conn, error) {
			mu.Lock()
			dialed++
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp", a)
		}}
	conn, err := Dial(opts)
	if err != nil {
		t.Fatal(err)
	}
	// A replicated table with two addresses: the fence asks both, on
	// connections of their own.
	c := &ClickHouse{conn: conn, opts: opts, log: slog.Default(), mode: Mode{Engine: "ReplicatedMergeTree", Replicas: 2}}
	defer c.Close()
	if err := c.awaitInflightInserts(ctx); err != nil {
		t.Fatal(err)
	}
	if len(c.peerConns) != 2 || dialed != 2 {
		t.Errorf("%d replica connections, %d dialled through Options.DialContext; want 2 and 2", len(c.peerConns), dialed)
	}

	for _, o := range []*clickhouse.Options{connOptions(opts, opts.Addr, opts.DialTimeout), connOptions(opts, opts.Addr[:1], 5)} {
		if o.Compression == nil || o.Compression.Method != clickhouse.CompressionLZ4 {
			t.Errorf("connection options without LZ4 compression: %+v", o.Compression)
		}
		if o.DialContext == nil || o.Auth.Database != opts.Database {
			t.Errorf("connection options without the dialer or the database: %+v", o)
		}
	}
}

// Blocks sent LZ4-compressed (clickhouse.compression lz4, or auto to a
// remote server) are stored like uncompressed ones, by Write and by an
// appended INSERT alike. The test servers are local, where auto sends
// them uncompressed, so this is the suite's only compressed insert.
func TestCompressedBlocksAreStored(t *testing.T) {
	ctx := context.Background()
	plain, _ := openTestSink(t)
	opts := plain.opts
	opts.Compression = true
	s, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if res, err := s.Write(ctx, rowsAt(100, seqIDs(1, 1000)...)); err != nil || res.Inserted != 1000 {
		t.Fatalf("compressed write: %+v, %v", res, err)
	}
	for i := range 3 {
		if rejected, err := s.Append(ctx, rowsAt(uint64(200+i), seqIDs(int64(1001+i*chunkRows), chunkRows)...)); err != nil || len(rejected) != 0 {
			t.Fatalf("compressed append %d: rejected %v, err %v", i, rejected, err)
		}
	}
	if err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, u := count(t, s); n != 1000+3*chunkRows || u != n {
		t.Errorf("count() %d, uniqExact(id) %d, want %d each", n, u, 1000+3*chunkRows)
	}
}
