package lease

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// The lock's session asks the server for TCP keepalives scaled to the lease,
// so a holder whose host vanishes loses the lock in seconds, not after the
// kernel's two hours; settings in postgres.url win.
func TestLockSessionHasServerKeepalives(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx := context.Background()
	for _, tt := range []struct {
		name, url string
		want      [3]string // idle, interval, count as SHOW prints them
	}{
		{"derived from the lease", o.PGURL, [3]string{"10", "2", "3"}},
		{"postgres.url wins", o.PGURL + "&tcp_keepalives_idle=60", [3]string{"60", "2", "3"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// A lock of its own per case: the previous case's session may
			// still hold its lock for a moment after Release on a loaded
			// machine (CI saw TryAcquire find it taken).
			l, err := TryAcquire(ctx, tt.url, Options{Name: "leader:ka:" + tt.name, LockKey: "outbox-cdc:ka:" + tt.name, TTL: 10 * time.Second})
			if err != nil || l == nil {
				t.Fatalf("TryAcquire: %v, %v", l, err)
			}
			defer l.Release(ctx)
			for i, name := range []string{"tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"} {
				var got string
				if err := l.conn.QueryRow(ctx, "SHOW "+name).Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != tt.want[i] {
					t.Errorf("%s = %s, want %s", name, got, tt.want[i])
				}
			}
		})
	}
}
