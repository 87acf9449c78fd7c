package sink

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// TestQuorumSettings lists the settings of a quorum INSERT for each mode,
// and sends each set to the ClickHouse 18.16 test server: 18.16 has no
// insert_quorum_parallel and refuses it, which is why the sink asks the
// server before it turns parallel quorums off (on 20.10 and later they are
// on by default and would break the sink's rule; sink/modern_cluster_test.go
// checks that side on ClickHouse 26).
func TestQuorumSettings(t *testing.T) {
	ctx := context.Background()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{testenv.ClickHouseAddr(t)}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &ClickHouse{conn: conn}
	has, err := c.hasSetting(ctx, "insert_quorum_parallel")
	if err != nil {
		t.Fatal(err)
	}
	if has {
		t.Fatal("the ClickHouse 18.16 test server knows insert_quorum_parallel")
	}
	for _, tc := range []struct {
		name     string
		mode     Mode
		timeout  time.Duration
		want     map[string]any
		accepted bool // by ClickHouse 18.16
	}{
		{"no quorum", Mode{Quorum: 0, SerialQuorum: true}, time.Second, nil, true},
		{"ClickHouse 18", Mode{Quorum: 2}, 30 * time.Second, map[string]any{"insert_quorum": 2, "insert_quorum_timeout": 30000}, true},
		{"default timeout", Mode{Quorum: 3}, 0, map[string]any{"insert_quorum": 3, "insert_quorum_timeout": 60000}, true},
		{"20.10 and later", Mode{Quorum: 2, SerialQuorum: true}, time.Minute,
			map[string]any{"insert_quorum": 2, "insert_quorum_timeout": 60000, "insert_quorum_parallel": 0}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.mode.quorumSettings(tc.timeout)
			if !maps.Equal(got, tc.want) {
				t.Fatalf("settings %v, want %v", got, tc.want)
			}
			var one uint8
			err := conn.QueryRow(clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings(got))), "SELECT 1").Scan(&one)
			if (err == nil) != tc.accepted {
				t.Errorf("ClickHouse 18.16 with %v: err %v, want accepted=%v", got, err, tc.accepted)
			}
		})
	}
}
