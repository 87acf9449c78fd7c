package sink

import (
	"math/big"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/shopspring/decimal"
)

func TestConverters(t *testing.T) {
	ts := time.Date(2026, 3, 4, 5, 6, 7, 123456000, time.UTC)
	num := pgtype.Numeric{Int: big.NewInt(-12345), Exp: -2, Valid: true}
	tests := []struct {
		chType string
		in     any
		want   any
		err    bool
	}{
		{"String", "héllo", "héllo", false},
		{"String", `{"a": [1, 2.50]}`, `{"a": [1, 2.50]}`, false},
		{"String", int64(-5), "-5", false},
		{"String", num, "-123.45", false},
		{"String", nil, "", false},
		{"LowCardinality(String)", "x", "x", false},
		{"Nullable(String)", nil, nil, false},
		{"Nullable(Int64)", int64(3), int64(3), false},
		{"Int64", int64(-9223372036854775808), int64(-9223372036854775808), false},
		{"Int32", int64(1 << 40), nil, true},
		{"Int8", int64(-128), int8(-128), false},
		{"UInt8", int64(-1), nil, true},
		{"UInt64", int64(42), uint64(42), false},
		{"UInt8", true, uint8(1), false},
		{"Int64", "17", int64(17), false},
		{"Int64", "x", nil, true},
		{"Float64", int64(2), float64(2), false},
		{"Float64", num, -123.45, false},
		{"Float32", 1.5, float32(1.5), false},
		{"Decimal(18, 2)", num, decimal.New(-12345, -2), false},
		{"DateTime", ts, ts, false},
		{"DateTime", time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC), nil, true},
		{"DateTime", "infinity", nil, true},
		{"DateTime64(6, 'UTC')", ts, ts, false},
		{"DateTime64(6, 'UTC')", time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC), false},
		{"Date", ts, ts, false},
		{"FixedString(2)", "abc", nil, true},
		{"UUID", "not-a-uuid", nil, true},
		{"Bool", "true", true, false},
	}
	for _, tt := range tests {
		conv, err := converterFor(tt.chType)
		if err != nil {
			t.Fatalf("%s: %v", tt.chType, err)
		}
		got, err := conv(tt.in)
		if (err != nil) != tt.err {
			t.Errorf("%s(%#v): err %v, want error %v", tt.chType, tt.in, err, tt.err)
			continue
		}
		if tt.err {
			continue
		}
		switch w := tt.want.(type) {
		case decimal.Decimal:
			if !w.Equal(got.(decimal.Decimal)) {
				t.Errorf("%s(%#v) = %v, want %v", tt.chType, tt.in, got, w)
			}
		case time.Time:
			if !w.Equal(got.(time.Time)) {
				t.Errorf("%s(%#v) = %v, want %v", tt.chType, tt.in, got, w)
			}
		default:
			if got != tt.want {
				t.Errorf("%s(%#v) = %#v, want %#v", tt.chType, tt.in, got, tt.want)
			}
		}
	}
	if _, err := converterFor("Array(String)"); err == nil {
		t.Error("Array(String) accepted; want an error naming the unsupported type")
	}
}
