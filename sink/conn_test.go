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
