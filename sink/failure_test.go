package sink

import (
	"context"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// An error that says nothing about the rows (here the server refuses the
// INSERT statement itself) retries the batch: no row is marked failed for it.
// Before, every code missing from a list of transient ones bisected the batch
// down to single rows and rejected them all.
func TestServerErrorThatIsNotAboutTheRowsIsRetried(t *testing.T) {
	s, _ := openTestSink(t)
	ctx := clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{"max_query_size": 20}))
	res, err := s.Write(ctx, rowsAt(100, 1, 2, 3, 4, 5, 6, 7, 8))
	if err == nil || len(res.Rejected) != 0 {
		t.Fatalf("write refused by the server: %+v, %v; want an error and no rejected rows", res, err)
	}
	if c := Classify(err); c != Retry {
		t.Errorf("class %s, want retry", c)
	}
	res, err = s.Write(context.Background(), rowsAt(100, 1, 2, 3, 4, 5, 6, 7, 8))
	if err != nil || res.Inserted+res.Skipped != 8 || len(res.Rejected) != 0 {
		t.Fatalf("retry: %+v, %v", res, err)
	}
	if n, u := count(t, s); n != 8 || u != 8 {
		t.Errorf("count %d uniq %d, want 8", n, u)
	}
}

// A materialized view that throws for one row fails the INSERT after the
// table's own part was written. Bisecting sent the stored rows again (8 rows
// became 22) and reported the row as rejected although it is in the table.
// The rows the failed INSERT stored are looked up before anything is sent
// again.
func TestViewThatThrowsStoresNothingTwice(t *testing.T) {
	ctx := context.Background()
	s, db := openTestSink(t)
	for _, q := range []string{
		fmt.Sprintf("CREATE TABLE `%s`.shaped (id Int64, ok UInt8) ENGINE = MergeTree ORDER BY id", db),
		fmt.Sprintf("CREATE MATERIALIZED VIEW `%s`.shape TO `%s`.shaped AS SELECT id, throwIf(id = 5) AS ok FROM `%s`.events", db, db, db),
	} {
		if err := s.conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.Write(ctx, rowsAt(100, seqIDs(1, 8)...))
	if err != nil {
		t.Fatal(err)
	}
	if n, u := count(t, s); n != 8 || u != 8 {
		t.Errorf("events count %d uniq %d, want 8 (result %+v)", n, u, res)
	}
	if len(res.Rejected) != 0 || res.Inserted != 8 {
		t.Errorf("result %+v: every row is in the table, none may be reported rejected", res)
	}
}

// After a restart a batch of any size is checked against what is stored:
// one IN list of 30,000 ids passed the server's max_query_size and failed on
// every retry.
func TestBigBatchIsCheckedAfterARestart(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestSink(t)
	rows := rowsAt(100, seqIDs(1_000_000_000_000, 30000)...) // 14 bytes each in an IN list
	if _, err := s.Write(ctx, rows[:20000]); err != nil {
		t.Fatal(err)
	}
	s2 := reopen(t, s)
	if err := s2.Recover(ctx, 50); err != nil {
		t.Fatal(err)
	}
	res, err := s2.Write(ctx, rows)
	if err != nil || res.Inserted != 10000 || res.Skipped != 20000 {
		t.Fatalf("re-sent 30,000-row batch: %+v, %v; want 10000 inserted, 20000 skipped", res, err)
	}
	if n, u := count(t, s); n != 30000 || u != 30000 {
		t.Errorf("count %d uniq %d, want 30000", n, u)
	}
}

func TestClassify(t *testing.T) {
	ex := func(code int32, msg string) error {
		return fmt.Errorf("insert: %w", &clickhouse.Exception{Code: code, Message: msg})
	}
	cases := []struct {
		name string
		err  error
		want Class
	}{
		{"our own conversion refused a value", &dataError{fmt.Errorf("value out of range")}, RowData},
		{"throwIf", ex(395, "Value passed to 'throwIf' function is non zero"), RowData},
		{"cannot parse", ex(6, "Cannot parse input"), RowData},
		{"out of range", ex(321, "Value is out of range"), RowData},
		{"quota", ex(201, "Quota for user exceeded"), Retry},
		{"memory limit", ex(241, "Memory limit (for query) exceeded"), Retry},
		{"cannot allocate", ex(173, "Cannot allocate memory"), Retry},
		{"too many parts", ex(252, "Too many parts (300). Merges are processing significantly slower than inserts"), Retry},
		{"too many partitions", ex(252, "Too many partitions for single INSERT block (more than 100)"), TooManyPartitions},
		{"syntax (e.g. max_query_size)", ex(62, "Syntax error"), Retry},
		{"illegal type of a daemon column", ex(43, "Illegal types of arguments (String, UInt32)"), Retry},
		{"unknown code", ex(99999, "something new"), Retry},
		{"not a server error", context.DeadlineExceeded, Retry},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Classify(c.err); got != c.want {
				t.Errorf("Classify = %s, want %s", got, c.want)
			}
		})
	}
}

// Unreachable: no server answered (connection refused, reset, timed out);
// anything the server said, or our own refusal, means it is up.
func TestUnreachable(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", fmt.Errorf("insert: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}), true},
		{"connection reset", fmt.Errorf("insert: %w", io.ErrUnexpectedEOF), true},
		{"read timeout", context.DeadlineExceeded, true},
		{"server exception", fmt.Errorf("insert: %w", &clickhouse.Exception{Code: 252, Message: "Too many parts"}), false},
		{"quorum not reached", fmt.Errorf("insert: %w", &clickhouse.Exception{Code: 285, Message: "Number of alive replicas (1) is less than requested quorum (2)"}), false},
		{"our own conversion", &dataError{fmt.Errorf("value out of range")}, false},
		{"no error", nil, false},
	}
	for _, c := range cases {
		if got := Unreachable(c.err); got != c.want {
			t.Errorf("%s: Unreachable = %v, want %v", c.name, got, c.want)
		}
	}
}
