package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// A transaction is decoded once its commit record is flushed, but other
// sessions see its rows only when the committing backend is done: after it
// waited for its synchronous standby. cdc can receive, insert and mark such a
// transaction in between; a marking whose snapshot does not see the rows
// updates none of them, and the slot then moves past rows that stay
// `pending` forever while ClickHouse has them (TestPrimaryFailover's "bug B",
// where the window was a backend preempted between its commit record and the
// end of its commit). Here the window is held open: a synchronous standby is
// named that never connects, and the producer commits with
// synchronous_commit = on, so its COMMIT waits until the test lets it go.
// cdc's own sessions run with the server's synchronous_commit = off and do not
// wait. A private server: synchronous_standby_names is server-wide.
func TestMarkingSeesRowsOfCommitsNotYetVisible(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := testenv.StartPrivate(t, "visibility")
	o := s.Outbox(t)
	r := start(t, o.Config())
	r.waitStreaming(t)
	committed := o.MustInsert(10, true)
	waitFor(t, "the first rows processed", 30*time.Second, func() bool { return o.StatusCounts()["processed"] == 10 })

	s.SetSynchronousStandbyNames(t, "absent_standby")
	released := false
	defer func() {
		if !released {
			s.SetSynchronousStandbyNames(t, "")
		}
	}()

	producer, err := pgx.Connect(ctx, s.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close(context.Background())
	if _, err := producer.Exec(ctx, `SET synchronous_commit = on`); err != nil {
		t.Fatal(err)
	}
	var pid uint32
	if err := producer.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	tx, err := producer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(ctx, `INSERT INTO event_outbox (event_type, event_date_time, environment, event_context, metadata_version)
	  SELECT 'order.created', now(), 'test', jsonb_build_object('n', g), g FROM generate_series(1, 20) g RETURNING id`)
	if err != nil {
		t.Fatal(err)
	}
	held, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	commitDone := make(chan error, 1)
	go func() { commitDone <- tx.Commit(ctx) }()
	waitFor(t, "the producer's COMMIT waiting for the synchronous standby", 30*time.Second, func() bool {
		var waiting bool
		err := o.PG.QueryRow(ctx, `SELECT coalesce(wait_event = 'SyncRep', false) FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&waiting)
		return err == nil && waiting
	})
	// The walsender does not wait for the standby: cdc inserts the rows
	// while no other session can see them yet.
	o.WaitCH(30, 30*time.Second)
	var visible int
	if err := o.PG.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE id = ANY($1)`, held).Scan(&visible); err != nil {
		t.Fatal(err)
	}
	if visible != 0 {
		t.Fatalf("%d of the held transaction's rows are visible before its commit returned: the window this test needs is not open", visible)
	}
	// Give the marking of those rows time to run (it follows the insert
	// within milliseconds) while they are still invisible.
	time.Sleep(2 * time.Second)
	select {
	case err := <-commitDone:
		t.Fatalf("the producer's COMMIT returned (%v) while its synchronous standby is absent", err)
	default:
	}

	s.SetSynchronousStandbyNames(t, "")
	released = true
	if err := <-commitDone; err != nil {
		t.Fatalf("commit after the standby requirement was lifted: %v", err)
	}
	committed = append(committed, held...)
	deadline := time.Now().Add(10 * time.Second)
	for o.StatusCounts()["processed"] < int64(len(committed)) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	o.AssertExactlyOnce(committed, nil)
	if err := r.shutdown(t); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}
