//go:build chdb

package chdb

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/google/uuid"
	"github.com/shopspring/decimal"
)

func TestMain(m *testing.M) {
	code := m.Run()
	CloseShared()
	os.Exit(code)
}

func engine(t *testing.T) (*Engine, string) {
	t.Helper()
	e, err := Shared()
	if err != nil {
		t.Fatal(err)
	}
	db, drop, err := e.NewDatabase(context.Background(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Error(err)
		}
	})
	return e, db
}

func TestVersion(t *testing.T) {
	e, _ := engine(t)
	v, err := e.ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.Version.Major < 24 {
		t.Errorf("engine version %s, want 24 or later", e.Version())
	}
	t.Logf("embedded engine: ClickHouse %s (revision %d, time zone %s)", e.Version(), v.Revision, v.Timezone)
}

// A batch goes in through clickhouse-go's encoder and comes back through its
// decoder, with the engine's own text rendering as the referee.
func TestBatchRoundTrip(t *testing.T) {
	ctx := context.Background()
	e, db := engine(t)
	tbl := "`" + db + "`.t"
	if err := e.Exec(ctx, "CREATE TABLE "+tbl+` (id Int64, ts DateTime64(6, 'UTC'), s LowCardinality(String),
		n Nullable(String), d Decimal(38, 10), u UUID, b Bool, m String MATERIALIZED s) ENGINE = MergeTree ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	b, err := e.PrepareBatch(ctx, "INSERT INTO "+tbl+" (`id`, `ts`, `s`, `n`, `d`, `u`, `b`)")
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2024, 2, 29, 23, 59, 59, 123456000, time.UTC)
	u := uuid.MustParse("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
	if err := b.Append(int64(-1), ts, "ünï", nil, decimal.RequireFromString("-98765432109876543210.0000000001"), u, true); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	var (
		id        int64
		text, s   string
		n         *string
		d, us, bs string
		got       time.Time
	)
	if err := e.QueryRow(ctx, "SELECT id, toString(ts), ts, s, n, toString(d), toString(u), toString(b) FROM "+tbl+" WHERE id = ?", -1).
		Scan(&id, &text, &got, &s, &n, &d, &us, &bs); err != nil {
		t.Fatal(err)
	}
	if id != -1 || text != "2024-02-29 23:59:59.123456" || !got.Equal(ts) || s != "ünï" || n != nil ||
		d != "-98765432109876543210.0000000001" || us != u.String() || bs != "true" {
		t.Errorf("got %d %q %s %q %v %q %q %q", id, text, got, s, n, d, us, bs)
	}
}

func TestErrorsAreExceptions(t *testing.T) {
	e, _ := engine(t)
	err := e.Exec(context.Background(), "SELECT throwIf(1)")
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) || ex.Code != 395 {
		t.Fatalf("got %v (%T), want a *clickhouse.Exception with code 395", err, err)
	}
	if err := e.QueryRow(context.Background(), "SELECT 1 WHERE 0").Scan(new(uint8)); err == nil {
		t.Error("empty result scanned without error")
	}
}

func TestBind(t *testing.T) {
	got, err := bind("SELECT '?', ? , `?`, ?", []any{"it's \\", int64(-3)})
	if err != nil {
		t.Fatal(err)
	}
	if want := "SELECT '?', 'it\\'s \\\\' , `?`, -3"; got != want {
		t.Errorf("bind = %s, want %s", got, want)
	}
	if _, err := bind("SELECT ?", []any{1, 2}); err == nil {
		t.Error("extra argument accepted")
	}
}
