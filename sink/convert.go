package sink

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

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
		conv = toDecimal
	case "DateTime":
		conv = timeIn(t, time.Unix(0, 0), time.Date(2106, 2, 7, 6, 28, 15, 0, time.UTC))
	case "DateTime64":
		conv = timeIn(t, time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2299, 12, 31, 23, 59, 59, 999999999, time.UTC))
	case "Date":
		conv = timeIn(t, time.Unix(0, 0), time.Date(2149, 6, 6, 0, 0, 0, 0, time.UTC))
	case "Date32":
		conv = timeIn(t, time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2299, 12, 31, 0, 0, 0, 0, time.UTC))
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

func splitType(t string) (base, args string) {
	i := strings.IndexByte(t, '(')
	if i < 0 || !strings.HasSuffix(t, ")") {
		return t, ""
	}
	return t[:i], t[i+1 : len(t)-1]
}

func zeroOf(base string) any {
	switch base {
	case "String", "JSON", "Object", "FixedString":
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
		return numericString(x)
	}
	return nil, fmt.Errorf("cannot convert %T to String", v)
}

func numericString(n pgtype.Numeric) (any, error) {
	d, err := numericDecimal(n)
	if err != nil {
		return nil, err
	}
	return d.String(), nil
}

func numericDecimal(n pgtype.Numeric) (decimal.Decimal, error) {
	if !n.Valid || n.NaN || n.InfinityModifier != pgtype.Finite || n.Int == nil {
		return decimal.Decimal{}, fmt.Errorf("numeric value is not a finite number")
	}
	return decimal.NewFromBigInt(new(big.Int).Set(n.Int), n.Exp), nil
}

func toInt(v any, bits int) (any, error) {
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
			return nil, fmt.Errorf("%v is not an integer", x)
		}
		n = int64(x)
	case string:
		p, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer", x)
		}
		n = p
	case pgtype.Numeric:
		d, err := numericDecimal(x)
		if err != nil {
			return nil, err
		}
		if !d.IsInteger() || d.BigInt().BitLen() > 63 {
			return nil, fmt.Errorf("%s does not fit Int%d", d, bits)
		}
		n = d.IntPart()
	default:
		return nil, fmt.Errorf("cannot convert %T to Int%d", v, bits)
	}
	lo, hi := int64(-1)<<(bits-1), int64(1)<<(bits-1)-1
	if bits == 64 {
		lo, hi = math.MinInt64, math.MaxInt64
	}
	if n < lo || n > hi {
		return nil, fmt.Errorf("%d out of range for Int%d", n, bits)
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

func toUint(v any, bits int) (any, error) {
	if b, ok := v.(bool); ok && bits == 8 {
		if b {
			return uint8(1), nil
		}
		return uint8(0), nil
	}
	iv, err := toInt(v, 64)
	if err != nil {
		return nil, err
	}
	n := iv.(int64)
	if n < 0 || (bits < 64 && uint64(n) > uint64(1)<<bits-1) {
		return nil, fmt.Errorf("%d out of range for UInt%d", n, bits)
	}
	switch bits {
	case 8:
		return uint8(n), nil
	case 16:
		return uint16(n), nil
	case 32:
		return uint32(n), nil
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
	return func(v any) (any, error) {
		var t time.Time
		switch x := v.(type) {
		case time.Time:
			t = x.UTC()
		case string:
			p, err := time.Parse("2006-01-02 15:04:05.999999999", x)
			if err != nil {
				return nil, fmt.Errorf("%q is not a timestamp %s can hold", x, chType)
			}
			t = p
		default:
			return nil, fmt.Errorf("cannot convert %T to %s", v, chType)
		}
		if t.Before(lo) || t.After(hi) {
			return nil, fmt.Errorf("%s is outside the range of %s", t.Format(time.RFC3339Nano), chType)
		}
		return t, nil
	}
}
