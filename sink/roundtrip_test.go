package sink

// Round trips of REAL values through the sink: every row of the pgoutput
// capture in decoder/testdata (PostgreSQL 15, every type the decoder
// supports) is decoded, written by the sink's normal Write path (its own
// column plan and converters, clickhouse-go's encoder) into ClickHouse
// columns of many types, and read back as ClickHouse itself renders the
// stored values. An expectation computed from the captured value (not by the
// sink's code) says what each column must hold, or that the sink must reject
// the row because the column cannot hold the value.
//
// The same checks run on both ends of the supported range: here on the real
// ClickHouse 18.16 server of scripts/testenv.sh, and in modern_test.go (build
// tag chdb, `make test-modern`) on a current engine, ClickHouse 26, embedded
// in the test process.

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// testEngine is one ClickHouse to run the checks on.
type testEngine struct {
	name   string
	modern bool        // has DateTime64, LowCardinality, Bool, Date32, JSON
	conn   driver.Conn // DDL, migrations and reading back
	db     string      // a database of the test's own
	// open returns the sink for a table of db, as the daemon would open it.
	open func(t *testing.T, table string) *ClickHouse
}

// server18 is the real ClickHouse 18.16 server, through sink.Open.
func server18(t *testing.T) *testEngine {
	t.Helper()
	addr, db := testenv.ClickHouseAddr(t), testenv.NewClickHouseDB(t)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	v, err := conn.ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.Version.Major != 18 {
		t.Fatalf("test server is ClickHouse %d.%d; these checks are for the oldest supported, 18.16", v.Version.Major, v.Version.Minor)
	}
	return &testEngine{name: "ClickHouse " + fmt.Sprint(v.Version), conn: conn, db: db,
		open: func(t *testing.T, table string) *ClickHouse {
			t.Helper()
			s, err := Open(context.Background(), Options{Addr: []string{addr}, Database: db, Table: table})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}}
}

func TestCapturedValuesClickHouse18(t *testing.T) {
	runCells(t, server18(t), capturedRows(t))
}

func TestRejectedRowOfLaterRelationClickHouse18(t *testing.T) {
	runLaterRunRejected(t, server18(t), capturedRows(t))
}

func TestMigratedTableClickHouse18(t *testing.T) {
	e := server18(t)
	runMigrated(t, e, capturedRows(t), []schemaColumn{
		{"id", "Int64", ""},
		{"event_type", "String", ""},
		{"event_date_time", "DateTime", ""},
		{"environment", "String", ""},
		{"event_context", "String", ""},
		{"metadata_version", "Int64", ""},
		{"created_at", "DateTime", ""},
		{"_lsn", "UInt64", ""},
		{"_seq", "UInt64", ""},
		{"_fingerprint", "UInt64", ""},
		{"_inserted_at", "DateTime", "DEFAULT now()"},
	})
}

// capturedRows replays the capture through the decoder, as the daemon
// would receive it: 6 rows in the first transaction, 1 after ALTER TABLE
// (a second Relation, with c_added).
func capturedRows(t *testing.T) []Row {
	t.Helper()
	dir := filepath.Join("..", "decoder", "testdata", "pgoutput")
	js, err := os.ReadFile(filepath.Join(dir, "capture.json"))
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ Files []struct{ Name string } }
	if err := json.Unmarshal(js, &info); err != nil {
		t.Fatal(err)
	}
	d := decoder.New()
	var (
		rows []Row
		lsn  uint64
		seq  uint64
	)
	for _, f := range info.Files {
		h, err := os.ReadFile(filepath.Join(dir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		data, err := hex.DecodeString(strings.TrimSpace(string(h)))
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		ev, err := d.Decode(data)
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		switch e := ev.(type) {
		case *decoder.Begin:
			lsn, seq = uint64(e.FinalLSN), 0
		case *decoder.Insert:
			rows = append(rows, Row{Pos: Position{LSN: lsn, Seq: seq}, ID: e.Values[0].(int64), Relation: e.Relation, Values: e.Values})
			seq++
		}
	}
	// The capture must still hold what these checks are about.
	byID := map[int64]Row{}
	for _, r := range rows {
		byID[r.ID] = r
	}
	val := func(id int64, col string) any {
		r, ok := byID[id]
		if !ok {
			t.Fatalf("capture has no row %d", id)
		}
		i := r.Relation.ColumnIndex(col)
		if i < 0 {
			t.Fatalf("capture has no column %s", col)
		}
		return r.Values[i]
	}
	anchors := []struct {
		id   int64
		col  string
		want any
	}{
		{1, "c_timestamp", time.Date(2024, 2, 29, 23, 59, 59, 123456000, time.UTC)},
		{1, "c_timestamptz", time.Date(2024, 2, 29, 18, 29, 59, 654321000, time.UTC)},
		{1, "c_jsonb", `{"a": "ünïcødé ✓", "b": {"nested": [1, 2.50, {"x": null, "ü": "日本"}]}, "big": 12345678901234567890.5, "neg": -0.0000001}`},
		{1, "c_int4", int64(math.MaxInt32)},
		{2, "c_text", nil},
		{3, "c_text", ""},
		{math.MaxInt64, "c_int4", int64(math.MinInt32)},
		{4, "c_varchar", "événement.créé 🎉"},
	}
	for _, a := range anchors {
		got := val(a.id, a.col)
		if w, ok := a.want.(time.Time); ok {
			if g, ok := got.(time.Time); !ok || !g.Equal(w) {
				t.Fatalf("capture row %d %s = %#v, want %s", a.id, a.col, got, w)
			}
			continue
		}
		if got != a.want {
			t.Fatalf("capture row %d %s = %#v, want %#v", a.id, a.col, got, a.want)
		}
	}
	if len(rows) != 7 || rows[6].Relation.ColumnIndex("c_added") < 0 {
		t.Fatalf("capture has %d rows, want 7 (the last after ADD COLUMN c_added)", len(rows))
	}
	return rows
}

// cell is one captured column written into one ClickHouse column type.
type cell struct {
	col, typ string
	modern   bool // the type exists only on current servers
}

// cells covers every column of the capture (every type the decoder
// supports, plus text it passes through) with the column types a user may
// give it.
var cells = []cell{
	{"id", "Int64", false},
	{"id", "UInt64", false},
	{"c_int4", "Int32", false},
	{"c_int4", "Nullable(Int32)", false},
	{"c_int4", "Int64", false},
	{"c_int4", "UInt32", false},
	{"c_int4", "Float64", false},
	{"c_int2", "Int16", false},
	{"c_int2", "Int8", false},
	{"c_varchar", "String", false},
	{"c_varchar", "Nullable(String)", false},
	{"c_varchar", "LowCardinality(String)", true},
	{"c_varchar", "LowCardinality(Nullable(String))", true},
	{"c_text", "String", false},
	{"c_text", "Nullable(String)", false},
	{"c_text", "LowCardinality(String)", true},
	{"c_bpchar", "String", false},
	{"c_bpchar", "FixedString(5)", false},
	{"c_timestamp", "DateTime", false},
	{"c_timestamp", "DateTime('UTC')", false},
	{"c_timestamp", "DateTime64(6, 'UTC')", true},
	{"c_timestamp", "Nullable(DateTime64(6, 'UTC'))", true},
	{"c_timestamp", "DateTime64(3, 'UTC')", true},
	{"c_timestamptz", "DateTime", false},
	{"c_timestamptz", "Nullable(DateTime('UTC'))", false},
	{"c_timestamptz", "DateTime64(6, 'UTC')", true},
	{"c_timestamptz", "DateTime64(6, 'Asia/Kolkata')", true},
	{"c_timestamptz", "DateTime64(9, 'UTC')", true},
	{"c_date", "Date", false},
	{"c_date", "Nullable(Date)", false},
	{"c_date", "Date32", true},
	{"c_date", "DateTime64(6, 'UTC')", true},
	{"c_jsonb", "String", false},
	{"c_jsonb", "Nullable(String)", false},
	{"c_jsonb", "JSON", true},
	{"c_json", "String", false},
	{"c_json", "Nullable(String)", false},
	{"c_numeric", "Decimal(38, 10)", false},
	{"c_numeric", "Nullable(Decimal(38, 10))", false},
	{"c_numeric", "Decimal(76, 30)", true},
	{"c_numeric", "Float64", false},
	{"c_numeric_20_6", "Decimal(20, 6)", false},
	{"c_numeric_20_6", "Decimal(18, 6)", false},
	{"c_float8", "Float64", false},
	{"c_float8", "Nullable(Float64)", false},
	{"c_float8", "Decimal(38, 10)", false},
	{"c_float4", "Float32", false},
	{"c_float4", "Float64", false},
	{"c_bool", "UInt8", false},
	{"c_bool", "Bool", true},
	{"c_bool", "Nullable(Bool)", true},
	{"c_bytea", "String", false},
	{"c_uuid", "UUID", false},
	{"c_uuid", "Nullable(UUID)", false},
	{"c_uuid", "String", false},
	{"c_inet", "String", false},
	{"c_interval", "String", false},
	{"c_mood", "String", false},
	{"c_mood", "LowCardinality(String)", true},
	{"c_added", "String", false},
}

// runCells writes all captured rows into one table per cell and checks
// every stored value.
func runCells(t *testing.T, e *testEngine, rows []Row) {
	t.Logf("engine: %s", e.name)
	for i, c := range cells {
		if c.modern && !e.modern {
			continue
		}
		t.Run(c.col+" "+c.typ, func(t *testing.T) {
			ctx := context.Background()
			table := fmt.Sprintf("cell%02d", i)
			cols := "id Int64, " + chclient.QuoteIdent(c.col) + " " + c.typ
			if c.col == "id" {
				cols = "id " + c.typ
			}
			if err := e.conn.Exec(ctx, fmt.Sprintf("CREATE TABLE %s.%s (%s, _lsn UInt64, _seq UInt64, _fingerprint UInt64) ENGINE = MergeTree ORDER BY (_lsn, _seq)",
				chclient.QuoteIdent(e.db), table, cols)); err != nil {
				t.Fatalf("create table: %v", err)
			}
			checkWrite(t, e, e.open(t, table), table, rows, []string{c.col}, map[string]string{c.col: c.typ})
		})
	}
}

// runLaterRunRejected checks a batch that spans two relations (the capture's
// second transaction comes after ALTER TABLE), so the sink sends it as two
// INSERTs, when ClickHouse refuses a row of the second: that row alone is
// rejected, and every other row is stored exactly once.
func runLaterRunRejected(t *testing.T, e *testEngine, rows []Row) {
	ctx := context.Background()
	last := rows[len(rows)-1]
	if last.Relation == rows[0].Relation {
		t.Fatal("the capture's last row should come with a second relation")
	}
	if err := e.conn.Exec(ctx, fmt.Sprintf("CREATE TABLE %s.later (id Int64, c_text String, _lsn UInt64, _seq UInt64, _fingerprint UInt64, "+
		"_guard UInt8 MATERIALIZED throwIf(id = %d)) ENGINE = MergeTree ORDER BY (_lsn, _seq)", chclient.QuoteIdent(e.db), last.ID)); err != nil {
		t.Fatal(err)
	}
	res, err := write(ctx, e.open(t, "later"), rows)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	if len(res.Rejected) != 1 || res.Rejected[0].ID != last.ID || res.Inserted != len(rows)-1 {
		t.Errorf("Write: %+v; want row %d rejected and %d rows inserted", res, last.ID, len(rows)-1)
	}
	got, err := e.conn.Query(ctx, "SELECT id, count() FROM "+chclient.QuoteIdent(e.db)+".later GROUP BY id ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	stored := map[int64]uint64{}
	for got.Next() {
		var id int64
		var n uint64
		if err := got.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		stored[id] = n
	}
	for _, r := range rows[:len(rows)-1] {
		if stored[r.ID] != 1 {
			t.Errorf("row %d stored %d times, want once", r.ID, stored[r.ID])
		}
	}
	if stored[last.ID] != 0 {
		t.Errorf("rejected row %d stored", last.ID)
	}
}

// expected is what one column must read back as, or that the row must be
// rejected.
type expected struct {
	text   string
	reject bool
}

// checkWrite writes rows through the sink and compares what the table holds
// in cols (of the given types) with what expect says, value by value. A row
// must be rejected when any of its values cannot be stored.
func checkWrite(t *testing.T, e *testEngine, s *ClickHouse, table string, rows []Row, cols []string, types map[string]string) {
	t.Helper()
	ctx := context.Background()
	want := map[Position]expected{}
	for _, r := range rows {
		var w expected
		for _, c := range cols {
			if wantCol(t, e, types[c], r, c).reject {
				w.reject = true
			}
		}
		want[r.Pos] = w
	}
	res, err := write(ctx, s, rows)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	rejected := map[int64]error{}
	for _, r := range res.Rejected {
		rejected[r.ID] = r.Err
	}
	wantInserted := 0
	for _, r := range rows {
		w := want[r.Pos]
		switch err, got := rejected[r.ID]; {
		case w.reject && !got:
			t.Errorf("row %d: stored; want it rejected (the column cannot hold the value)", r.ID)
		case !w.reject && got:
			t.Errorf("row %d: rejected (%v); want it stored", r.ID, err)
		case !w.reject:
			wantInserted++
		}
	}
	if res.Inserted != wantInserted || res.Skipped != 0 {
		t.Errorf("Write: %d inserted, %d skipped, %d rejected; want %d inserted", res.Inserted, res.Skipped, len(res.Rejected), wantInserted)
	}

	// Read back as the engine renders the stored values.
	exprs := []string{"_lsn", "_seq"}
	for _, c := range cols {
		exprs = append(exprs, render(types[c], chclient.QuoteIdent(c)))
	}
	q := fmt.Sprintf("SELECT %s FROM %s.%s ORDER BY _lsn, _seq", strings.Join(exprs, ", "), chclient.QuoteIdent(e.db), chclient.QuoteIdent(table))
	got, err := e.conn.Query(ctx, q)
	if err != nil {
		t.Fatalf("read back: %v\n%s", err, q)
	}
	defer got.Close()
	byPos := map[Position]Row{}
	for _, r := range rows {
		byPos[r.Pos] = r
	}
	n := 0
	for got.Next() {
		var p Position
		texts := make([]string, len(cols))
		dest := []any{&p.LSN, &p.Seq}
		for i := range texts {
			dest = append(dest, &texts[i])
		}
		if err := got.Scan(dest...); err != nil {
			t.Fatal(err)
		}
		n++
		r, ok := byPos[p]
		if !ok {
			t.Errorf("stored row at %+v that was never written", p)
			continue
		}
		if want[p].reject {
			continue // reported above
		}
		for i, c := range cols {
			w := wantCol(t, e, types[c], r, c)
			if !sameText(types[c], texts[i], w.text) {
				t.Errorf("row %d column %s %s: stored %s, want %s (sent %s)", r.ID, c, types[c], texts[i], w.text, describe(r, c))
			}
		}
	}
	if err := got.Err(); err != nil {
		t.Fatal(err)
	}
	if n != wantInserted {
		t.Errorf("table holds %d rows, want %d", n, wantInserted)
	}
}

// write is s.Write, with a panic (a converter's, say) reported as an error
// of this check rather than ending the whole test binary.
func write(ctx context.Context, s *ClickHouse, rows []Row) (res Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return s.Write(ctx, rows)
}

// wantCol is the expectation for one column of a row; a relation without
// the column leaves ClickHouse's default (what NULL becomes).
func wantCol(t *testing.T, e *testEngine, typ string, r Row, col string) expected {
	t.Helper()
	var v any
	if j := r.Relation.ColumnIndex(col); j >= 0 {
		v = r.Values[j]
	}
	return expect(t, e, typ, v)
}

func describe(r Row, col string) string {
	j := r.Relation.ColumnIndex(col)
	if j < 0 {
		return "nothing: the relation has no such column"
	}
	v := r.Values[j]
	switch x := v.(type) {
	case time.Time:
		return x.Format(time.RFC3339Nano)
	case pgtype.Numeric:
		if s, err := numericText(x); err == nil {
			return "numeric " + s
		}
	}
	return fmt.Sprintf("%T %#v", v, v)
}

// render is the SQL that shows a stored value of a column type as text,
// exactly and the same way on ClickHouse 18 and 26: strings in hex, floats
// as their bytes, times in UTC, NULL as NULL.
func render(typ, expr string) string {
	if inner, ok := wrapped(typ, "LowCardinality"); ok {
		return render(inner, expr)
	}
	if inner, ok := wrapped(typ, "Nullable"); ok {
		return fmt.Sprintf("if(isNull(%s), 'NULL', %s)", expr, render(inner, "assumeNotNull("+expr+")"))
	}
	base, _ := splitType(typ)
	switch base {
	case "String", "FixedString":
		return "hex(" + expr + ")"
	case "Float32", "Float64":
		return "hex(reinterpretAsString(" + expr + "))"
	case "DateTime", "DateTime64":
		return "toString(" + expr + ", 'UTC')"
	}
	return "toString(" + expr + ")"
}

func wrapped(typ, wrapper string) (string, bool) {
	typ = strings.TrimSpace(typ)
	if strings.HasPrefix(typ, wrapper+"(") && strings.HasSuffix(typ, ")") {
		return typ[len(wrapper)+1 : len(typ)-1], true
	}
	return "", false
}

// sameText compares a read-back text with the expectation; decimals by
// value (ClickHouse 18 prints trailing zeros, 26 does not), and the epoch as
// ClickHouse 18 prints it (a zero DateTime or Date shows as 0000-00-00).
func sameText(typ, got, want string) bool {
	if got == want {
		return true
	}
	switch {
	case got == "0000-00-00 00:00:00" && want == "1970-01-01 00:00:00",
		got == "0000-00-00" && want == "1970-01-01":
		return true
	}
	base, _ := splitType(strings.TrimSuffix(strings.TrimPrefix(typ, "Nullable("), ")"))
	if strings.HasPrefix(base, "Decimal") {
		g, ok1 := new(big.Rat).SetString(got)
		w, ok2 := new(big.Rat).SetString(want)
		return ok1 && ok2 && g.Cmp(w) == 0
	}
	return false
}

// expect says what a column of type typ must hold once the sink wrote the
// decoded value v into it (as render shows it), from the value alone.
func expect(t *testing.T, e *testEngine, typ string, v any) expected {
	t.Helper()
	if inner, ok := wrapped(typ, "LowCardinality"); ok {
		return expect(t, e, inner, v)
	}
	if inner, ok := wrapped(typ, "Nullable"); ok {
		if v == nil {
			return expected{text: "NULL"}
		}
		return expect(t, e, inner, v)
	}
	base, args := splitType(typ)
	bad := func(what string) expected {
		t.Fatalf("test bug: no expectation for %T into %s (%s)", v, typ, what)
		return expected{}
	}
	reject := expected{reject: true}
	switch base {
	case "String", "FixedString":
		var b []byte
		switch x := v.(type) {
		case nil:
		case string:
			b = []byte(x)
		case []byte:
			b = x
		default:
			return bad("text")
		}
		if base == "FixedString" {
			n, _ := strconv.Atoi(args)
			if len(b) > n {
				return reject
			}
			b = append(slices.Clone(b), make([]byte, n-len(b))...)
		}
		return expected{text: strings.ToUpper(hex.EncodeToString(b))}
	case "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64":
		var n int64
		switch x := v.(type) {
		case nil:
		case int64:
			n = x
		case bool:
			if x {
				n = 1
			}
		default:
			return bad("integer")
		}
		bits, _ := strconv.Atoi(strings.TrimPrefix(strings.TrimPrefix(base, "U"), "Int"))
		lo, hi := new(big.Int).Lsh(big.NewInt(-1), uint(bits-1)), new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(bits-1)), big.NewInt(1))
		if strings.HasPrefix(base, "UInt") {
			lo, hi = big.NewInt(0), new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(bits)), big.NewInt(1))
		}
		if b := big.NewInt(n); b.Cmp(lo) < 0 || b.Cmp(hi) > 0 {
			return reject
		}
		return expected{text: strconv.FormatInt(n, 10)}
	case "Float32", "Float64":
		var f float64
		switch x := v.(type) {
		case nil:
		case float64:
			f = x
		case int64:
			f = float64(x)
		case string: // text the decoder could not type, e.g. numeric NaN
			p, err := strconv.ParseFloat(x, 64)
			if err != nil {
				return reject
			}
			f = p
		case pgtype.Numeric:
			s, err := numericText(x)
			if err != nil {
				return bad(err.Error())
			}
			if f, err = strconv.ParseFloat(s, 64); err != nil {
				return bad(err.Error())
			}
		default:
			return bad("number")
		}
		var b []byte
		if base == "Float32" {
			b = binary.LittleEndian.AppendUint32(nil, math.Float32bits(float32(f)))
		} else {
			b = binary.LittleEndian.AppendUint64(nil, math.Float64bits(f))
		}
		// reinterpretAsString drops trailing zero bytes.
		return expected{text: strings.ToUpper(hex.EncodeToString(bytesTrimRightZero(b)))}
	case "Decimal":
		ps := strings.Split(args, ",")
		p, _ := strconv.Atoi(strings.TrimSpace(ps[0]))
		s, _ := strconv.Atoi(strings.TrimSpace(ps[1]))
		r := new(big.Rat)
		switch x := v.(type) {
		case nil:
		case int64:
			r.SetInt64(x)
		case float64: // the number PostgreSQL prints: the shortest decimal
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return reject
			}
			r.SetString(strconv.FormatFloat(x, 'g', -1, 64))
		case string:
			if _, ok := r.SetString(x); !ok {
				return reject // e.g. NaN
			}
		case pgtype.Numeric:
			text, err := numericText(x)
			if err != nil {
				return bad(err.Error())
			}
			r.SetString(text)
		default:
			return bad("decimal")
		}
		// ClickHouse keeps s fractional digits (dropping the rest, as its
		// own conversions do) and at most p-s integer digits.
		scale := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(s)), nil)
		scaled := new(big.Int).Quo(new(big.Int).Mul(r.Num(), scale), r.Denom())
		limit := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(p)), nil)
		if new(big.Int).Abs(scaled).Cmp(limit) >= 0 {
			return reject
		}
		return expected{text: new(big.Rat).SetFrac(scaled, scale).RatString()}
	case "DateTime", "DateTime64", "Date", "Date32":
		var ts time.Time
		switch x := v.(type) {
		case nil:
			ts = time.Unix(0, 0).UTC()
		case time.Time:
			ts = x.UTC()
		case string: // 'infinity' and the like
			return reject
		default:
			return bad("time")
		}
		var lo, hi time.Time
		layout := "2006-01-02 15:04:05"
		switch base {
		case "DateTime":
			lo, hi = time.Unix(0, 0), time.Unix(math.MaxUint32, 0)
			ts = ts.Truncate(time.Second)
		case "DateTime64":
			prec, _ := strconv.Atoi(strings.TrimSpace(strings.Split(args, ",")[0]))
			lo, hi = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2299, 12, 31, 23, 59, 59, 999999999, time.UTC)
			if prec == 9 { // nanoseconds since 1970 in an Int64
				hi = time.Unix(0, math.MaxInt64)
			}
			ts = ts.Truncate(time.Duration(math.Pow10(9 - prec)))
			if prec > 0 {
				layout += "." + strings.Repeat("0", prec)
			}
		case "Date":
			lo, hi = time.Unix(0, 0), time.Date(2149, 6, 6, 0, 0, 0, 0, time.UTC)
			layout = "2006-01-02"
		case "Date32":
			lo, hi = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2299, 12, 31, 0, 0, 0, 0, time.UTC)
			layout = "2006-01-02"
		}
		if ts.Before(lo) || ts.After(hi) {
			return reject
		}
		return expected{text: ts.Format(layout)}
	case "UUID":
		switch x := v.(type) {
		case nil:
			return expected{text: uuid.Nil.String()}
		case string:
			u, err := uuid.Parse(x)
			if err != nil {
				return reject
			}
			return expected{text: u.String()}
		}
		return bad("uuid")
	case "Bool":
		switch x := v.(type) {
		case nil:
			return expected{text: "false"}
		case bool:
			return expected{text: strconv.FormatBool(x)}
		}
		return bad("bool")
	case "JSON":
		switch x := v.(type) {
		case nil:
			return expected{text: "{}"} // the type's default
		case string:
			// The JSON type stores a parsed document, not the text: what
			// ClickHouse makes of this text on its own is what must be
			// there. Text it refuses (arrays, scalars) rejects the row.
			var doc string
			if err := e.conn.QueryRow(context.Background(), "SELECT toString(CAST(? AS JSON))", x).Scan(&doc); err != nil {
				return reject
			}
			return expected{text: doc}
		}
		return bad("json")
	}
	return bad("type")
}

func bytesTrimRightZero(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// numericText is the exact decimal text of a numeric, computed here rather
// than by the sink.
func numericText(n pgtype.Numeric) (string, error) {
	if !n.Valid || n.NaN || n.InfinityModifier != pgtype.Finite || n.Int == nil {
		return "", fmt.Errorf("not a finite numeric")
	}
	r := new(big.Rat).SetInt(n.Int)
	p := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(max(n.Exp, -n.Exp))), nil)
	if n.Exp >= 0 {
		r.Mul(r, new(big.Rat).SetInt(p))
	} else {
		r.Quo(r, new(big.Rat).SetInt(p))
	}
	return r.FloatString(int(max(0, -n.Exp))), nil
}

// schemaColumn is one column as system.columns describes it.
type schemaColumn struct {
	name, typ, def string // def: default_kind and default_expression
}

// outboxFrom names the captured column whose values go into each outbox
// column of the migrated table.
var outboxFrom = map[string]string{
	"id":               "id",
	"event_type":       "c_varchar",
	"event_date_time":  "c_timestamp",
	"environment":      "c_text",
	"event_context":    "c_jsonb",
	"metadata_version": "c_int4",
	"created_at":       "c_timestamptz",
}

// runMigrated applies the ClickHouse migrations exactly as `cdc migrate`
// does (twice: they are idempotent), checks the resulting schema, then
// writes the captured values under the outbox's column names into the
// migrated table and checks every stored value.
func runMigrated(t *testing.T, e *testEngine, rows []Row, want []schemaColumn) {
	ctx := context.Background()
	t.Logf("engine: %s", e.name)
	target := migrations.ClickHouse{Database: e.db, Table: "events"}
	for i := 0; i < 2; i++ {
		if _, err := migrations.ApplyClickHouse(ctx, e.conn, target); err != nil {
			t.Fatalf("migrate (run %d): %v", i+1, err)
		}
	}

	// The schema.
	res, err := e.conn.Query(ctx, "SELECT name, type, default_kind, default_expression FROM system.columns WHERE database = ? AND table = 'events'", e.db)
	if err != nil {
		t.Fatal(err)
	}
	var got []schemaColumn
	for res.Next() {
		var c schemaColumn
		var kind, expr string
		if err := res.Scan(&c.name, &c.typ, &kind, &expr); err != nil {
			t.Fatal(err)
		}
		c.def = strings.TrimSpace(kind + " " + expr)
		got = append(got, c)
	}
	res.Close()
	if !slices.Equal(got, want) {
		t.Errorf("migrated table columns:\n got %v\nwant %v", got, want)
	}
	var engine, partition, sorting string
	if err := e.conn.QueryRow(ctx, "SELECT engine, partition_key, sorting_key FROM system.tables WHERE database = ? AND name = 'events'", e.db).
		Scan(&engine, &partition, &sorting); err != nil {
		t.Fatal(err)
	}
	if engine != "MergeTree" || partition != "toYYYYMM(event_date_time)" || sorting != "event_type, event_date_time, id" {
		t.Errorf("migrated table: engine %s, partition by %s, order by %s", engine, partition, sorting)
	}
	if e.modern {
		var name, typ, expr string
		if err := e.conn.QueryRow(ctx, "SELECT name, type, expr FROM system.data_skipping_indices WHERE database = ? AND table = 'events'", e.db).
			Scan(&name, &typ, &expr); err != nil {
			t.Errorf("skipping index on _lsn: %v", err)
		} else if name != "_lsn_minmax" || typ != "minmax" || expr != "_lsn" {
			t.Errorf("skipping index: %s %s on %s, want _lsn_minmax minmax on _lsn", name, typ, expr)
		}
	}
	v, err := e.conn.ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	_, names, err := migrations.ClickHouseStatements(migrations.Version{Major: int(v.Version.Major), Minor: int(v.Version.Minor)}, target)
	if err != nil {
		t.Fatal(err)
	}
	recorded, err := e.conn.Query(ctx, "SELECT name FROM "+chclient.QuoteIdent(e.db)+".cdc_schema_migrations ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	var rec []string
	for recorded.Next() {
		var n string
		if err := recorded.Scan(&n); err != nil {
			t.Fatal(err)
		}
		rec = append(rec, n)
	}
	recorded.Close()
	if !slices.Equal(rec, names) {
		t.Errorf("cdc_schema_migrations holds %v, want %v once each", rec, names)
	}

	// The captured rows under the outbox's names.
	renamed := map[*decoder.Relation]*decoder.Relation{}
	var outRows []Row
	for _, r := range rows {
		rel, ok := renamed[r.Relation]
		if !ok {
			c := *r.Relation
			c.Columns = slices.Clone(r.Relation.Columns)
			for to, from := range outboxFrom {
				c.Columns[r.Relation.ColumnIndex(from)].Name = to
			}
			rel, renamed[r.Relation] = &c, &c
		}
		r.Relation = rel
		outRows = append(outRows, r)
	}
	// Values are checked against the schema the engine must have (want),
	// not the one it has: a column migrated as DateTime64(3) loses the
	// microseconds a DateTime64(6) must keep.
	types := map[string]string{}
	var cols []string
	for _, c := range want {
		types[c.name] = c.typ
		if _, ok := outboxFrom[c.name]; ok {
			cols = append(cols, c.name)
		}
	}
	before := time.Now().Add(-time.Second)
	checkWrite(t, e, e.open(t, "events"), "events", outRows, cols, types)

	// _inserted_at is filled by ClickHouse, in UTC.
	var oldest, newest string
	if err := e.conn.QueryRow(ctx, "SELECT toString(min(_inserted_at), 'UTC'), toString(max(_inserted_at), 'UTC') FROM "+chclient.QuoteIdent(e.db)+".events").
		Scan(&oldest, &newest); err != nil {
		t.Fatal(err)
	}
	after := time.Now().Add(time.Second)
	for _, s := range []string{oldest, newest} {
		ts, err := time.Parse("2006-01-02 15:04:05.999999999", s)
		if err != nil || ts.Before(before.Truncate(time.Second)) || ts.After(after) {
			t.Errorf("_inserted_at %s (UTC), want between %s and %s", s, before.UTC().Format(time.DateTime), after.UTC().Format(time.DateTime))
		}
	}
}
