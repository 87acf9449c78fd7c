package sink

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/shopspring/decimal"
)

// Conversion of decoded PostgreSQL values (see package decoder for their Go
// types) into the table's ClickHouse column types, so that the same daemon
// serves ClickHouse 18 (DateTime, String) and current servers
// (DateTime64(6, 'UTC'), LowCardinality(String), JSON).
//
// There is one path: every column of a batch is a colBuf holding its
// values in the Go type clickhouse-go takes for the column's type, filled
// value by value as rows are converted (a value that does not fit rejects
// its row, never the batch) and handed to the driver's column one slice at
// a time. A value is never boxed on the way.

// colBuf holds the converted values of one column of a block.
type colBuf interface {
	// add converts a decoded value (nil for SQL NULL) and appends it.
	add(v any) error
	// truncate drops the values from row n on.
	truncate(n int)
	// value returns row i's value, for a driver that takes rows one by one.
	value(i int) any
	// appendTo appends rows lo..hi-1 to the driver's column.
	appendTo(col column.Interface, lo, hi int) error
}

// conversion is how decoded values become values of one ClickHouse type.
type conversion interface {
	// newBuf returns an empty buffer of a column of the type, or of
	// Nullable(the type) when nullable.
	newBuf(nullable bool) colBuf
}

// typed converts to T, the Go type clickhouse-go takes for the column.
type typed[T any] struct {
	conv func(v any) (T, error) // v is never nil
	// zero is what a NULL becomes in a column that is not Nullable: the
	// type's default, as ClickHouse's own input_format_null_as_default does.
	zero T
}

func (t typed[T]) newBuf(nullable bool) colBuf {
	if nullable {
		return &nullableBuf[T]{buf: buf[T]{typed: t}}
	}
	return &buf[T]{typed: t}
}

// buf is the buffer of a column that is not Nullable.
type buf[T any] struct {
	typed[T]
	vals []T
}

func (b *buf[T]) add(v any) error {
	x := b.zero
	if v != nil {
		var err error
		if x, err = b.conv(v); err != nil {
			return err
		}
	}
	b.vals = append(b.vals, x)
	return nil
}

func (b *buf[T]) truncate(n int) {
	clear(b.vals[n:]) // drop references to the batch's strings
	b.vals = b.vals[:n]
}

func (b *buf[T]) value(i int) any { return b.vals[i] }

func (b *buf[T]) appendTo(col column.Interface, lo, hi int) error {
	_, err := col.Append(b.vals[lo:hi])
	return err
}

// nullableBuf is the buffer of a Nullable column: a NULL stays NULL.
type nullableBuf[T any] struct {
	buf[T]
	null []bool
	ptrs []*T // what appendTo hands the driver, pointing into vals
}

func (b *nullableBuf[T]) add(v any) error {
	if err := b.buf.add(v); err != nil {
		return err
	}
	b.null = append(b.null, v == nil)
	return nil
}

func (b *nullableBuf[T]) truncate(n int) {
	b.buf.truncate(n)
	b.null = b.null[:n]
}

func (b *nullableBuf[T]) value(i int) any {
	if b.null[i] {
		return nil
	}
	return b.vals[i]
}

func (b *nullableBuf[T]) appendTo(col column.Interface, lo, hi int) error {
	b.ptrs = b.ptrs[:0]
	for i := lo; i < hi; i++ {
		var p *T
		if !b.null[i] {
			p = &b.vals[i]
		}
		b.ptrs = append(b.ptrs, p)
	}
	_, err := col.Append(b.ptrs)
	clear(b.ptrs)
	return err
}

// converterFor returns the maker of a column buffer for a ClickHouse type
// as system.columns spells it, or an error naming the type when the sink
// cannot convert to it.
func converterFor(chType string) (func() colBuf, error) {
	t, nullable := strings.TrimSpace(chType), false
	for {
		if inner, ok := unwrap(t, "LowCardinality"); ok {
			t = inner // the driver's LowCardinality column takes the inner type's values
		} else if inner, ok := unwrap(t, "Nullable"); ok {
			t, nullable = inner, true
		} else {
			break
		}
	}
	conv, err := conversionFor(t)
	if err != nil {
		return nil, err
	}
	return func() colBuf { return conv.newBuf(nullable) }, nil
}

// unwrap returns x of wrapper(x).
func unwrap(t, wrapper string) (string, bool) {
	if !strings.HasPrefix(t, wrapper+"(") || !strings.HasSuffix(t, ")") {
		return "", false
	}
	return strings.TrimSpace(t[len(wrapper)+1 : len(t)-1]), true
}

// conversionFor is the conversion to a type without Nullable or
// LowCardinality around it.
func conversionFor(t string) (conversion, error) {
	base, args := splitType(t)
	switch base {
	case "String":
		return typed[string]{conv: stringOf}, nil
	case "JSON", "Object":
		return typed[string]{conv: stringOf, zero: "{}"}, nil // ClickHouse refuses "" as a document
	case "FixedString":
		return fixedString(t, args)
	case "Int8":
		return signed[int8](8), nil
	case "Int16":
		return signed[int16](16), nil
	case "Int32":
		return signed[int32](32), nil
	case "Int64":
		return signed[int64](64), nil
	case "UInt8":
		return unsigned[uint8](8), nil
	case "UInt16":
		return unsigned[uint16](16), nil
	case "UInt32":
		return unsigned[uint32](32), nil
	case "UInt64":
		return unsigned[uint64](64), nil
	case "Bool":
		return typed[bool]{conv: boolOf}, nil
	case "Float32":
		return typed[float32]{conv: func(v any) (float32, error) { f, err := floatOf(v); return float32(f), err }}, nil
	case "Float64":
		return typed[float64]{conv: floatOf}, nil
	case "Decimal", "Decimal32", "Decimal64", "Decimal128", "Decimal256":
		return decimalIn(t, base, args)
	case "DateTime", "DateTime64", "Date", "Date32":
		lo, hi := timeBounds(base)
		return typed[time.Time]{conv: timeIn(t, lo, hi), zero: time.Unix(0, 0).UTC()}, nil
	case "UUID":
		return typed[uuid.UUID]{conv: uuidOf}, nil
	}
	return nil, fmt.Errorf("column type %s is not supported by the sink", t)
}

func splitType(t string) (base, args string) {
	i := strings.IndexByte(t, '(')
	if i < 0 || !strings.HasSuffix(t, ")") {
		return t, ""
	}
	return t[:i], t[i+1 : len(t)-1]
}

func signed[T int8 | int16 | int32 | int64](bits int) typed[T] {
	return typed[T]{conv: func(v any) (T, error) {
		n, err := intOf(v, bits)
		return T(n), err
	}}
}

func unsigned[T uint8 | uint16 | uint32 | uint64](bits int) typed[T] {
	return typed[T]{conv: func(v any) (T, error) {
		n, err := uintOf(v, bits)
		return T(n), err
	}}
}

func fixedString(t, args string) (conversion, error) {
	n, err := strconv.Atoi(args)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", t, err)
	}
	return typed[string]{conv: func(v any) (string, error) {
		s, err := stringOf(v)
		if err == nil && len(s) > n {
			return "", fmt.Errorf("value of %d bytes does not fit %s", len(s), t)
		}
		return s, err
	}}, nil
}

func decimalIn(t, base, args string) (conversion, error) {
	prec, scale, err := decimalPrecision(base, args)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", t, err)
	}
	limit := decimal.New(1, int32(prec-scale))
	return typed[decimal.Decimal]{zero: decimal.Zero, conv: func(v any) (decimal.Decimal, error) {
		d, err := decimalOf(v)
		if err != nil {
			return decimal.Decimal{}, err
		}
		// ClickHouse keeps scale digits after the point (the driver drops
		// the rest); what is left must fit the precision.
		if d.Truncate(int32(scale)).Abs().GreaterThanOrEqual(limit) {
			return decimal.Decimal{}, fmt.Errorf("%s does not fit %s", d, t)
		}
		return d, nil
	}}, nil
}

// decimalPrecision reads Decimal(P, S) and DecimalNN(S).
func decimalPrecision(base, args string) (prec, scale int, err error) {
	parts := strings.Split(args, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	if base == "Decimal" {
		if len(parts) != 2 {
			return 0, 0, fmt.Errorf("want Decimal(P, S)")
		}
		if prec, err = strconv.Atoi(parts[0]); err != nil {
			return 0, 0, err
		}
		scale, err = strconv.Atoi(parts[1])
		return prec, scale, err
	}
	prec = map[string]int{"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}[base]
	scale, err = strconv.Atoi(parts[0])
	return prec, scale, err
}

// timeBounds is the range of a ClickHouse date or time type.
func timeBounds(base string) (lo, hi time.Time) {
	switch base {
	case "DateTime":
		return time.Unix(0, 0), time.Date(2106, 2, 7, 6, 28, 15, 0, time.UTC)
	case "DateTime64":
		// ClickHouse goes up to 2299, but clickhouse-go encodes through
		// UnixNano, which wraps after 2262-04-11: stop there.
		return time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), time.Unix(0, math.MaxInt64).UTC()
	case "Date":
		return time.Unix(0, 0), time.Date(2149, 6, 6, 0, 0, 0, 0, time.UTC)
	default: // Date32
		return time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2299, 12, 31, 0, 0, 0, 0, time.UTC)
	}
}

func stringOf(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case []byte:
		return string(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), nil
	case bool:
		return strconv.FormatBool(x), nil
	case time.Time:
		return x.UTC().Format("2006-01-02 15:04:05.999999"), nil
	case pgtype.Numeric:
		d, err := numericDecimal(x)
		if err != nil {
			return "", err
		}
		return d.String(), nil
	}
	return "", fmt.Errorf("cannot convert %T to String", v)
}

func numericDecimal(n pgtype.Numeric) (decimal.Decimal, error) {
	if !n.Valid || n.NaN || n.InfinityModifier != pgtype.Finite || n.Int == nil {
		return decimal.Decimal{}, fmt.Errorf("numeric value is not a finite number")
	}
	return decimal.NewFromBigInt(new(big.Int).Set(n.Int), n.Exp), nil
}

// intOf returns v as an integer of Int<bits>'s range (a bool is 0 or 1).
func intOf(v any, bits int) (int64, error) {
	var n int64
	switch x := v.(type) {
	case int64:
		n = x
	case bool:
		if x {
			n = 1
		}
	case float64:
		if x != math.Trunc(x) || math.IsInf(x, 0) || math.IsNaN(x) || x < math.MinInt64 || x >= math.MaxInt64 {
			return 0, fmt.Errorf("%v is not an integer", x)
		}
		n = int64(x)
	case string:
		p, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not an integer", x)
		}
		n = p
	case pgtype.Numeric:
		d, err := numericDecimal(x)
		if err != nil {
			return 0, err
		}
		if !d.IsInteger() || d.BigInt().BitLen() > 63 {
			return 0, fmt.Errorf("%s does not fit Int%d", d, bits)
		}
		n = d.IntPart()
	default:
		return 0, fmt.Errorf("cannot convert %T to Int%d", v, bits)
	}
	lo, hi := int64(-1)<<(bits-1), int64(1)<<(bits-1)-1
	if bits == 64 {
		lo, hi = math.MinInt64, math.MaxInt64
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("%d out of range for Int%d", n, bits)
	}
	return n, nil
}

// uintOf returns v as an integer of UInt<bits>'s range (a bool is 0 or 1).
func uintOf(v any, bits int) (uint64, error) {
	n, err := intOf(v, 64)
	if err != nil {
		return 0, err
	}
	if n < 0 || (bits < 64 && uint64(n) > uint64(1)<<bits-1) {
		return 0, fmt.Errorf("%d out of range for UInt%d", n, bits)
	}
	return uint64(n), nil
}

func boolOf(v any) (bool, error) {
	switch x := v.(type) {
	case bool:
		return x, nil
	case int64:
		return x != 0, nil
	case string:
		b, err := strconv.ParseBool(x)
		if err != nil {
			return false, fmt.Errorf("%q is not a boolean", x)
		}
		return b, nil
	}
	return false, fmt.Errorf("cannot convert %T to Bool", v)
}

func floatOf(v any) (float64, error) {
	switch x := v.(type) {
	case float64:
		return x, nil
	case int64:
		return float64(x), nil
	case pgtype.Numeric:
		d, err := numericDecimal(x)
		if err != nil {
			return 0, err
		}
		f, _ := d.Float64()
		return f, nil
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not a number", x)
		}
		return f, nil
	}
	return 0, fmt.Errorf("cannot convert %T to a float", v)
}

func decimalOf(v any) (decimal.Decimal, error) {
	switch x := v.(type) {
	case pgtype.Numeric:
		return numericDecimal(x)
	case int64:
		return decimal.NewFromInt(x), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return decimal.Decimal{}, fmt.Errorf("%v is not a decimal", x)
		}
		return decimal.NewFromFloat(x), nil
	case string:
		d, err := decimal.NewFromString(strings.TrimSpace(x))
		if err != nil {
			return decimal.Decimal{}, fmt.Errorf("%q is not a decimal", x)
		}
		return d, nil
	}
	return decimal.Decimal{}, fmt.Errorf("cannot convert %T to Decimal", v)
}

func uuidOf(v any) (uuid.UUID, error) {
	s, ok := v.(string)
	if !ok {
		return uuid.Nil, fmt.Errorf("cannot convert %T to UUID", v)
	}
	u, err := uuid.Parse(s)
	if err != nil {
		return uuid.Nil, fmt.Errorf("%q is not a UUID", s)
	}
	return u, nil
}

// timeIn converts to a date or time type of range lo..hi.
func timeIn(chType string, lo, hi time.Time) func(v any) (time.Time, error) {
	return func(v any) (time.Time, error) {
		var t time.Time
		switch x := v.(type) {
		case time.Time:
			t = x.UTC()
		case string:
			p, err := time.Parse("2006-01-02 15:04:05.999999999", x)
			if err != nil {
				return time.Time{}, fmt.Errorf("%q is not a timestamp %s can hold", x, chType)
			}
			t = p
		default:
			return time.Time{}, fmt.Errorf("cannot convert %T to %s", v, chType)
		}
		if t.Before(lo) || t.After(hi) {
			return time.Time{}, fmt.Errorf("%s is outside the range of %s", t.Format(time.RFC3339Nano), chType)
		}
		return t, nil
	}
}
