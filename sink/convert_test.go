package sink

import (
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/shopspring/decimal"
)

// TestConversions runs every ClickHouse type the docs promise (README,
// "ClickHouse": the types `cdc migrate` picks, and JSON/Object, Nullable,
// Date/Date32, UUID, Decimal, other integer and float types for tables made
// by hand) against every Go type the decoder yields (package decoder:
// nil, int64, float64, bool, pgtype.Numeric, time.Time, []byte, string),
// through the one path a batch takes: the column buffer, then the
// driver's column of that type, which must take the buffer's values.
func TestConversions(t *testing.T) {
	ts := time.Date(2026, 3, 4, 5, 6, 7, 123456000, time.UTC)
	day := time.Date(2026, 3, 4, 0, 0, 0, 0, time.UTC)
	epoch := time.Unix(0, 0).UTC()
	old := time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC)
	num := pgtype.Numeric{Int: big.NewInt(-12345), Exp: -2, Valid: true}
	whole := pgtype.Numeric{Int: big.NewInt(42), Exp: 0, Valid: true}
	u := uuid.MustParse("0f8fad5b-d9cb-469f-a165-70867728950e")
	const fail = "error"
	tests := []struct {
		chType string
		in     any
		want   any // fail: the row is rejected
	}{
		// Strings: every decoded value has a text form.
		{"String", "héllo", "héllo"},
		{"String", `{"a": [1, 2.50]}`, `{"a": [1, 2.50]}`},
		{"String", []byte{0xff, 'a'}, "\xffa"},
		{"String", int64(-5), "-5"},
		{"String", 2.5, "2.5"},
		{"String", true, "true"},
		{"String", num, "-123.45"},
		{"String", ts, "2026-03-04 05:06:07.123456"},
		{"String", nil, ""},
		{"LowCardinality(String)", "x", "x"},
		{"LowCardinality(String)", nil, ""},
		{"LowCardinality(Nullable(String))", nil, nil},
		{"LowCardinality(Nullable(String))", "x", "x"},
		{"FixedString(2)", "ab", "ab"},
		{"FixedString(2)", "abc", fail},
		{"FixedString(2)", nil, ""},
		// Integers: range-checked, from numbers, booleans and text.
		{"Int64", int64(-9223372036854775808), int64(-9223372036854775808)},
		{"Int64", "17", int64(17)},
		{"Int64", "x", fail},
		{"Int64", 3.0, int64(3)},
		{"Int64", 3.5, fail},
		{"Int64", whole, int64(42)},
		{"Int64", num, fail},
		{"Int64", ts, fail},
		{"Int64", nil, int64(0)},
		{"Int32", int64(1 << 40), fail},
		{"Int32", int64(-7), int32(-7)},
		{"Int16", int64(32767), int16(32767)},
		{"Int16", int64(32768), fail},
		{"Int8", int64(-128), int8(-128)},
		{"Int8", true, int8(1)},
		{"UInt64", int64(42), uint64(42)},
		{"UInt64", int64(-1), fail},
		{"UInt32", int64(1 << 32), fail},
		{"UInt16", int64(65535), uint16(65535)},
		{"UInt8", int64(-1), fail},
		{"UInt8", true, uint8(1)},
		{"UInt8", []byte("1"), fail},
		{"Nullable(Int64)", int64(3), int64(3)},
		{"Nullable(Int64)", nil, nil},
		// Floats.
		{"Float64", int64(2), float64(2)},
		{"Float64", num, -123.45},
		{"Float64", "1e3", 1000.0},
		{"Float64", true, fail},
		{"Float32", 1.5, float32(1.5)},
		{"Float32", nil, float32(0)},
		// Decimals: exact, within the precision.
		{"Decimal(18, 2)", num, decimal.New(-12345, -2)},
		{"Decimal(18, 2)", int64(7), decimal.New(7, 0)},
		{"Decimal(18, 2)", "1.25", decimal.New(125, -2)},
		{"Decimal(3, 2)", int64(10), fail},
		{"Decimal(18, 2)", nil, decimal.Zero},
		{"Decimal32(2)", 1.5, decimal.New(15, -1)},
		{"Decimal64(4)", whole, decimal.New(42, 0)},
		{"Decimal128(4)", ts, fail},
		// Dates and times: range-checked; NULL is the epoch.
		{"DateTime", ts, ts},
		{"DateTime", old, fail},
		{"DateTime", "infinity", fail},
		{"DateTime", "2026-03-04 05:06:07", ts.Truncate(time.Second)},
		{"DateTime", nil, epoch},
		{"DateTime('UTC')", ts, ts},
		{"DateTime", int64(1), fail},
		{"DateTime64(6, 'UTC')", ts, ts},
		{"DateTime64(6, 'UTC')", old, old},
		{"DateTime64(6, 'UTC')", nil, epoch},
		{"Nullable(DateTime64(6, 'UTC'))", nil, nil},
		{"Nullable(DateTime)", ts, ts},
		{"Date", day, day},
		{"Date", old, fail},
		{"Date32", old, old},
		// Booleans, UUIDs, JSON documents.
		{"Bool", "true", true},
		{"Bool", true, true},
		{"Bool", int64(0), false},
		{"Bool", "maybe", fail},
		{"Bool", 1.0, fail},
		{"UUID", u.String(), u},
		{"UUID", "not-a-uuid", fail},
		{"UUID", []byte(u.String()), fail},
		{"UUID", nil, uuid.Nil},
		{"Nullable(UUID)", nil, nil},
		{"JSON", `{"a": 1}`, `{"a": 1}`},
		{"JSON", nil, "{}"},
		{"Object('json')", `{"a": 1}`, `{"a": 1}`},
	}
	for _, tt := range tests {
		newCol, err := converterFor(tt.chType)
		if err != nil {
			t.Fatalf("%s: %v", tt.chType, err)
		}
		col := newCol()
		err = col.add(tt.in)
		if (err != nil) != (tt.want == fail) {
			t.Errorf("%s(%#v): err %v, want error %v", tt.chType, tt.in, err, tt.want == fail)
			continue
		}
		if err != nil {
			continue
		}
		if got := col.value(0); !sameValue(got, tt.want) {
			t.Errorf("%s(%#v) = %#v, want %#v", tt.chType, tt.in, got, tt.want)
		}
		appendToDriver(t, tt.chType, col)
	}
}

// sameValue compares converted values; times and decimals by value.
func sameValue(got, want any) bool {
	switch w := want.(type) {
	case decimal.Decimal:
		g, ok := got.(decimal.Decimal)
		return ok && w.Equal(g)
	case time.Time:
		g, ok := got.(time.Time)
		return ok && w.Equal(g)
	}
	return got == want
}

// appendToDriver hands col's one value to clickhouse-go's column of chType.
// Object('json') has no column in the driver any more (the old servers
// that have the type take its values as text), and the driver knows
// DecimalNN(S) as Decimal(P, S), which is how system.columns spells it.
func appendToDriver(t *testing.T, chType string, col colBuf) {
	t.Helper()
	if strings.HasPrefix(chType, "Object(") {
		return
	}
	if base, args := splitType(chType); strings.HasPrefix(base, "Decimal") && base != "Decimal" {
		prec, scale, err := decimalPrecision(base, args)
		if err != nil {
			t.Fatal(err)
		}
		chType = fmt.Sprintf("Decimal(%d, %d)", prec, scale)
	}
	sc := &column.ServerContext{Revision: 54460, VersionMajor: 24, Timezone: time.UTC}
	drv, err := column.Type(chType).Column("c", sc)
	if err != nil {
		t.Fatalf("driver column %s: %v", chType, err)
	}
	if err := col.appendTo(drv, 0, 1); err != nil {
		t.Errorf("driver column %s refuses %#v: %v", chType, col.value(0), err)
	} else if drv.Rows() != 1 {
		t.Errorf("driver column %s has %d rows after one append", chType, drv.Rows())
	}
}

// Types the sink cannot convert to are refused by name, so that Open can
// name the column (see TestUnconvertibleColumnIsASchemaError).
func TestUnsupportedTypes(t *testing.T) {
	for _, typ := range []string{"Array(String)", "Map(String, String)", "Tuple(Int64, String)", "Nullable(Array(String))",
		"LowCardinality(Map(String, String))", "Enum8('a' = 1)", "IPv4", "Decimal(x, 2)", "FixedString(n)"} {
		if _, err := converterFor(typ); err == nil {
			t.Errorf("%s accepted; want an error naming the type", typ)
		}
	}
}

// A block's columns keep their values apart and drop them on truncate: a
// row refused by a later column leaves the earlier ones as they were.
func TestColumnBuffersTruncate(t *testing.T) {
	for _, typ := range []string{"String", "Nullable(String)", "Int64", "DateTime"} {
		newCol, err := converterFor(typ)
		if err != nil {
			t.Fatal(err)
		}
		col := newCol()
		first := any("1")
		if typ == "DateTime" {
			first = time.Unix(1, 0).UTC()
		}
		for _, v := range []any{first, nil, first} {
			if err := col.add(v); err != nil {
				t.Fatalf("%s: %v", typ, err)
			}
		}
		col.truncate(1)
		if err := col.add(nil); err != nil {
			t.Fatal(err)
		}
		sc := &column.ServerContext{Revision: 54460, VersionMajor: 24, Timezone: time.UTC}
		drv, err := column.Type(typ).Column("c", sc)
		if err != nil {
			t.Fatal(err)
		}
		if err := col.appendTo(drv, 0, 2); err != nil || drv.Rows() != 2 {
			t.Fatalf("%s: append: %v, %d rows", typ, err, drv.Rows())
		}
		if got := col.value(0); !sameValue(got, first) && !(typ == "Int64" && got == int64(1)) {
			t.Errorf("%s: row 0 is %#v after truncate, want %#v", typ, got, first)
		}
		if strings.HasPrefix(typ, "Nullable") && col.value(1) != nil {
			t.Errorf("%s: row 1 is %#v, want NULL", typ, col.value(1))
		}
	}
}
