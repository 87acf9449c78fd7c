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

// converter turns one decoded PostgreSQL value (see package decoder for the
// possible Go types) into the Go value clickhouse-go expects for a column
// type. A conversion error rejects that one row, never the batch.
type converter func(v any) (any, error)

// converterFor builds the converter for a ClickHouse type as system.columns
// spells it, so the same daemon serves ClickHouse 18 (DateTime, String) and
// current servers (DateTime64(6, 'UTC'), LowCardinality(String), JSON).
func converterFor(chType string) (converter, error) {
	t := strings.TrimSpace(chType)
	switch {
	case strings.HasPrefix(t, "LowCardinality(") && strings.HasSuffix(t, ")"):
		return converterFor(t[len("LowCardinality(") : len(t)-1])
	case strings.HasPrefix(t, "Nullable(") && strings.HasSuffix(t, ")"):
		inner, err := converterFor(t[len("Nullable(") : len(t)-1])
		if err != nil {
			return nil, err
		}
		return func(v any) (any, error) {
			if v == nil {
				return nil, nil
			}
			return inner(v)
		}, nil
	}
	base, args := splitType(t)
	var conv converter
	switch base {
	case "String", "JSON", "Object":
		conv = toString
	case "FixedString":
		n, err := strconv.Atoi(args)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", t, err)
		}
		conv = func(v any) (any, error) {
			s, err := toString(v)
			if err != nil {
				return nil, err
			}
			if len(s.(string)) > n {
				return nil, fmt.Errorf("value of %d bytes does not fit %s", len(s.(string)), t)
			}
			return s, nil
		}
	case "Int8", "Int16", "Int32", "Int64":
		bits, _ := strconv.Atoi(base[3:])
		conv = func(v any) (any, error) { return toInt(v, bits) }
	case "UInt8", "UInt16", "UInt32", "UInt64":
		bits, _ := strconv.Atoi(base[4:])
		conv = func(v any) (any, error) { return toUint(v, bits) }
	case "Bool":
		conv = toBool
	case "Float32":
		conv = func(v any) (any, error) {
			f, err := toFloat(v)
			if err != nil {
				return nil, err
			}
			return float32(f), nil
		}
	case "Float64":
		conv = func(v any) (any, error) { return toFloat(v) }
	case "Decimal", "Decimal32", "Decimal64", "Decimal128", "Decimal256":
		prec, scale, err := decimalPrecision(base, args)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", t, err)
		}
		limit := decimal.New(1, int32(prec-scale))
		conv = func(v any) (any, error) {
			d, err := toDecimal(v)
			if err != nil {
				return nil, err
			}
			// ClickHouse keeps scale digits after the point (the driver
			// drops the rest); what is left must fit the precision.
			if d.(decimal.Decimal).Truncate(int32(scale)).Abs().GreaterThanOrEqual(limit) {
				return nil, fmt.Errorf("%s does not fit %s", d, t)
			}
			return d, nil
		}
	case "DateTime", "DateTime64", "Date", "Date32":
		lo, hi := timeBounds(base)
		conv = timeIn(t, lo, hi)
	case "UUID":
		conv = toUUID
	default:
		return nil, fmt.Errorf("column type %s is not supported by the sink", t)
	}
	zero, err := conv(zeroOf(base))
	if err != nil {
		return nil, fmt.Errorf("zero value for %s: %w", t, err)
	}
	// A NULL into a non-Nullable column becomes the type's default, as
	// ClickHouse's own input_format_null_as_default does.
	return func(v any) (any, error) {
		if v == nil {
			return zero, nil
		}
		return conv(v)
	}, nil
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

func splitType(t string) (base, args string) {
	i := strings.IndexByte(t, '(')
	if i < 0 || !strings.HasSuffix(t, ")") {
		return t, ""
	}
	return t[:i], t[i+1 : len(t)-1]
}

func zeroOf(base string) any {
	switch base {
	case "JSON", "Object":
		return "{}" // ClickHouse's default; it refuses "" as a document
	case "String", "FixedString":
		return ""
	case "DateTime", "DateTime64", "Date", "Date32":
		return time.Unix(0, 0).UTC()
	case "UUID":
		return uuid.Nil.String()
	case "Bool":
		return false
	default:
		return int64(0)
	}
}

func toString(v any) (any, error) {
	s, err := stringOf(v)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// stringOf is toString without boxing the result.
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

func toInt(v any, bits int) (any, error) {
	n, err := intOf(v, bits)
	if err != nil {
		return nil, err
	}
	switch bits {
	case 8:
		return int8(n), nil
	case 16:
		return int16(n), nil
	case 32:
		return int32(n), nil
	}
	return n, nil
}

// intOf is toInt without narrowing and boxing the result.
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

func toUint(v any, bits int) (any, error) {
	if b, ok := v.(bool); ok && bits == 8 {
		if b {
			return uint8(1), nil
		}
		return uint8(0), nil
	}
	n, err := uintOf(v, bits)
	if err != nil {
		return nil, err
	}
	switch bits {
	case 8:
		return uint8(n), nil
	case 16:
		return uint16(n), nil
	case 32:
		return uint32(n), nil
	}
	return n, nil
}

// uintOf is toUint without narrowing and boxing the result (and without
// its bool case, which only UInt8 has).
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

func toBool(v any) (any, error) {
	switch x := v.(type) {
	case bool:
		return x, nil
	case int64:
		return x != 0, nil
	case string:
		b, err := strconv.ParseBool(x)
		if err != nil {
			return nil, fmt.Errorf("%q is not a boolean", x)
		}
		return b, nil
	}
	return nil, fmt.Errorf("cannot convert %T to Bool", v)
}

func toFloat(v any) (float64, error) {
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

func toDecimal(v any) (any, error) {
	switch x := v.(type) {
	case pgtype.Numeric:
		return numericDecimal(x)
	case int64:
		return decimal.NewFromInt(x), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, fmt.Errorf("%v is not a decimal", x)
		}
		return decimal.NewFromFloat(x), nil
	case string:
		d, err := decimal.NewFromString(strings.TrimSpace(x))
		if err != nil {
			return nil, fmt.Errorf("%q is not a decimal", x)
		}
		return d, nil
	}
	return nil, fmt.Errorf("cannot convert %T to Decimal", v)
}

func toUUID(v any) (any, error) {
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("cannot convert %T to UUID", v)
	}
	u, err := uuid.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a UUID", s)
	}
	return u, nil
}

func timeIn(chType string, lo, hi time.Time) converter {
	conv := timeOf(chType, lo, hi)
	return func(v any) (any, error) {
		t, err := conv(v)
		if err != nil {
			return nil, err
		}
		return t, nil
	}
}

// timeOf is timeIn without boxing the result.
func timeOf(chType string, lo, hi time.Time) func(v any) (time.Time, error) {
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

// colBuf holds the converted values of one column of a batch, in a typed
// slice for the column types the outbox table uses (String,
// LowCardinality(String), Int64, UInt64, DateTime, DateTime64), so a value
// is converted without being boxed and the column takes the whole slice in
// one Append; any other type keeps its converter's values and appends them
// one by one, as clickhouse-go's row-wise Append does. Both give the column
// the same values.
type colBuf struct {
	kind  colKind
	conv  converter // colGeneric
	str   func(any) (string, error)
	tim   func(any) (time.Time, error)
	strs  []string
	ints  []int64
	uints []uint64
	times []time.Time
	anys  []any
}

type colKind uint8

const (
	colGeneric colKind = iota
	colString
	colInt64
	colUInt64
	colTime
)

// kindOf picks the buffer for a ClickHouse column type.
func kindOf(chType string) colKind {
	t := strings.TrimSpace(chType)
	if strings.HasPrefix(t, "LowCardinality(") && strings.HasSuffix(t, ")") {
		if inner := strings.TrimSpace(t[len("LowCardinality(") : len(t)-1]); inner == "String" {
			return colString
		}
		return colGeneric
	}
	base, _ := splitType(t)
	switch {
	case t == "String":
		return colString
	case t == "Int64":
		return colInt64
	case t == "UInt64":
		return colUInt64
	case base == "DateTime" || base == "DateTime64":
		return colTime
	}
	return colGeneric
}

// newColBuf returns the buffer of a column of type chType whose values come
// from the decoder (conv is the column's converter) or, with conv nil, are
// stream positions (UInt64 values added with addUint).
func newColBuf(chType string, conv converter) *colBuf {
	c := &colBuf{kind: kindOf(chType), conv: conv}
	if conv == nil {
		if c.kind != colUInt64 {
			c.kind = colGeneric
		}
		return c
	}
	switch c.kind {
	case colString:
		c.str = func(v any) (string, error) {
			if v == nil {
				return "", nil // the type's default, as converterFor's NULL
			}
			return stringOf(v)
		}
	case colTime:
		base, _ := splitType(strings.TrimSpace(chType))
		lo, hi := timeBounds(base)
		of := timeOf(chType, lo, hi)
		zero, err := of(time.Unix(0, 0).UTC())
		if err != nil {
			c.kind = colGeneric
			break
		}
		c.tim = func(v any) (time.Time, error) {
			if v == nil {
				return zero, nil
			}
			return of(v)
		}
	}
	return c
}

// add converts v and appends it.
func (c *colBuf) add(v any) error {
	switch c.kind {
	case colString:
		s, err := c.str(v)
		if err != nil {
			return err
		}
		c.strs = append(c.strs, s)
	case colInt64:
		var n int64
		if v != nil {
			var err error
			if n, err = intOf(v, 64); err != nil {
				return err
			}
		}
		c.ints = append(c.ints, n)
	case colUInt64:
		var n uint64
		if v != nil {
			var err error
			if n, err = uintOf(v, 64); err != nil {
				return err
			}
		}
		c.uints = append(c.uints, n)
	case colTime:
		t, err := c.tim(v)
		if err != nil {
			return err
		}
		c.times = append(c.times, t)
	default:
		x, err := c.conv(v)
		if err != nil {
			return err
		}
		c.anys = append(c.anys, x)
	}
	return nil
}

// addUint appends a stream position.
func (c *colBuf) addUint(n uint64) {
	if c.kind == colUInt64 {
		c.uints = append(c.uints, n)
		return
	}
	c.anys = append(c.anys, n)
}

// truncate drops the values from row n on.
func (c *colBuf) truncate(n int) {
	switch c.kind {
	case colString:
		clear(c.strs[n:])
		c.strs = c.strs[:n]
	case colInt64:
		c.ints = c.ints[:n]
	case colUInt64:
		c.uints = c.uints[:n]
	case colTime:
		c.times = c.times[:n]
	default:
		clear(c.anys[n:])
		c.anys = c.anys[:n]
	}
}

// value returns row i's value as the converter would.
func (c *colBuf) value(i int) any {
	switch c.kind {
	case colString:
		return c.strs[i]
	case colInt64:
		return c.ints[i]
	case colUInt64:
		return c.uints[i]
	case colTime:
		return c.times[i]
	}
	return c.anys[i]
}

// appendTo appends rows lo..hi-1 to col. On an error it returns the row
// that failed, or -1 when it cannot tell.
func (c *colBuf) appendTo(col column.Interface, lo, hi int) (int, error) {
	var err error
	switch c.kind {
	case colString:
		_, err = col.Append(c.strs[lo:hi])
	case colInt64:
		_, err = col.Append(c.ints[lo:hi])
	case colUInt64:
		_, err = col.Append(c.uints[lo:hi])
	case colTime:
		_, err = col.Append(c.times[lo:hi])
	default:
		for i := lo; i < hi; i++ {
			if err := col.AppendRow(c.anys[i]); err != nil {
				return i, err
			}
		}
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}
