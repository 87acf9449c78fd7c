package checkpoint_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/lease"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// A marking given the transactions of its rows waits until they are visible
// to it, on every kind of marking (processed or failed, fenced or not), and
// then marks every row. Here the transaction is simply still open; the
// daemon meets the same state between a commit record that was decoded and
// the end of that commit (internal/daemon
// TestMarkingSeesRowsOfCommitsNotYetVisible). Without xids a marking does
// not wait, and skips the rows it cannot see: the hazard.
func TestMarkingWaitsUntilItsTransactionsAreVisible(t *testing.T) {
	o := testenv.NewOutbox(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := lease.TryAcquire(ctx, o.PGURL, lease.Options{Name: "leader:visible", LockKey: "outbox-cdc:visible", TTL: time.Minute})
	if err != nil || l == nil {
		t.Fatalf("lease: %v, %v", l, err)
	}
	defer l.Release(context.Background())
	plain := checkpoint.NewStore(o.PG, "public.event_outbox")
	fenced := plain.Fenced(checkpoint.Term{Lease: l.Name(), Term: l.Term()})
	processed := func(s *checkpoint.Store) func(context.Context, []int64, []uint32) error {
		return s.MarkProcessed
	}
	failed := func(s *checkpoint.Store) func(context.Context, []int64, []uint32) error {
		return func(ctx context.Context, ids []int64, xids []uint32) error {
			f := make([]checkpoint.Failure, len(ids))
			for i, id := range ids {
				f[i] = checkpoint.Failure{ID: id, Error: "rejected"}
			}
			return s.MarkFailed(ctx, f, xids)
		}
	}
	inMarking := func(s *checkpoint.Store) func(context.Context, []int64, []uint32) error {
		return func(ctx context.Context, ids []int64, xids []uint32) error {
			m, err := s.BeginMarking(ctx)
			if err != nil {
				return err
			}
			defer m.Rollback(context.Background())
			if err := m.MarkProcessed(ctx, ids, xids); err != nil {
				return err
			}
			return m.Commit(ctx)
		}
	}
	tests := []struct {
		name   string
		mark   func(context.Context, []int64, []uint32) error
		status string
	}{
		{"processed", processed(plain), "processed"},
		{"processed, fenced", processed(fenced), "processed"},
		{"processed in a marking", inMarking(plain), "processed"},
		{"processed in a marking, fenced", inMarking(fenced), "processed"},
		{"failed", failed(plain), "failed"},
		{"failed, fenced", failed(fenced), "failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, o.PGURL)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(context.Background())
			rows, err := tx.Query(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
			  SELECT 'order.created', now(), 'test', '{}', 1 FROM generate_series(1, 5) RETURNING id, xmin::text::bigint`)
			if err != nil {
				t.Fatal(err)
			}
			var ids []int64
			var id, xid int64 // xid: the 32-bit xid pgoutput's Begin carries
			if _, err := pgx.ForEachRow(rows, []any{&id, &xid}, func() error {
				ids = append(ids, id)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			xids := []uint32{uint32(xid)}

			// Without xids: returns at once, having marked nothing.
			if err := tt.mark(ctx, ids, nil); err != nil {
				t.Fatalf("marking without xids: %v", err)
			}
			done := make(chan error, 1)
			go func() { done <- tt.mark(ctx, ids, xids) }()
			select {
			case err := <-done:
				t.Fatalf("the marking returned (%v) while its transaction is not visible", err)
			case <-time.After(500 * time.Millisecond):
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("marking: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the marking did not return within 10s of the commit")
			}
			var n int
			if err := o.PG.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE id = ANY($1) AND status = $2`, ids, tt.status).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != len(ids) {
				t.Errorf("%d of %d rows %s, want all", n, len(ids), tt.status)
			}

			// A marking that cannot see its transaction ends with its context.
			short, stop := context.WithTimeout(ctx, 200*time.Millisecond)
			defer stop()
			var next int64
			if err := o.PG.QueryRow(ctx, `SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000`).Scan(&next); err != nil {
				t.Fatal(err)
			}
			if err := tt.mark(short, ids, []uint32{uint32(next)}); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("marking for a transaction that never ends: %v, want the context's deadline", err)
			}
		})
	}
}

// widenXid turns the stream's 32-bit xids into the xid8 nearest the
// snapshot's xmax, across an epoch boundary in either direction.
func TestWidenXid(t *testing.T) {
	const epoch = int64(1) << 32
	tests := []struct {
		name     string
		xid, ref int64
		want     int64
	}{
		{"committed before xmax", 990, 1000, 990},
		{"in progress at xmax", 1000, 1000, 1000},
		{"in progress above xmax", 1005, 1000, 1005},
		{"epoch 3", 990, 3*epoch + 1000, 3*epoch + 990},
		{"previous epoch, xmax just wrapped", epoch - 6, epoch + 10, epoch - 6},
		{"next epoch, xid just wrapped", 3, epoch - 5, epoch + 3},
		{"2^31 - 1 below", 1000 - (1<<31 - 1) + epoch, 5*epoch + 1000, 5*epoch + 1000 - (1<<31 - 1)},
		{"2^31 - 1 above", 1000 + 1<<31 - 1, 5*epoch + 1000, 5*epoch + 1000 + 1<<31 - 1},
	}
	o := testenv.NewOutbox(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got string
			q := `SELECT ` + checkpoint.WidenXid("$1::bigint", "$2::bigint") + `::text`
			if err := o.PG.QueryRow(context.Background(), q, tt.xid, tt.ref).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != strconv.FormatInt(tt.want, 10) {
				t.Errorf("widen(%d, ref %d) = %s, want %d", tt.xid, tt.ref, got, tt.want)
			}
		})
	}
}
