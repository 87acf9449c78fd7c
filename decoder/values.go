package decoder

import (
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Decoded values have one of these Go types, whatever the PostgreSQL type:
//
//	nil              SQL NULL
//	int64            int2, int4, int8, oid
//	float64          float4, float8
//	bool             bool
//	pgtype.Numeric   numeric (exact)
//	time.Time        timestamp (as UTC), timestamptz, date (always UTC)
//	[]byte           bytea
//	string           text, varchar, bpchar, name, json/jsonb (raw text),
//	                 uuid and every other type (its text form)
//
// A value pgtype cannot decode (e.g. timestamp 'infinity') stays as its text:
// the sink then rejects that one row instead of the stream stopping.

type kind uint8

const (
	kindText kind = iota
	kindInt
	kindFloat
	kindBool
	kindNumeric
	kindTime
	kindBytes
)

type columnCodec struct {
	oid  uint32
	kind kind
	m    *pgtype.Map
}

// ValueDecoder decodes text-format column values by type OID. The backfill
// reads rows in text format and uses the same decoder, so both paths hand the
// sink identical values.
type ValueDecoder struct {
	m      *pgtype.Map
	codecs map[uint32]*columnCodec
}

// NewValueDecoder returns a decoder using pgtype's default type map.
func NewValueDecoder() *ValueDecoder {
	return &ValueDecoder{m: pgtype.NewMap(), codecs: make(map[uint32]*columnCodec)}
}

// Decode decodes one non-NULL text value of the given type OID.
func (v *ValueDecoder) Decode(oid uint32, text []byte) any {
	val, err := v.codecFor(oid).decode(text)
	if err != nil {
		return string(text)
	}
	return val
}

func (v *ValueDecoder) codecFor(oid uint32) *columnCodec {
	if c, ok := v.codecs[oid]; ok {
		return c
	}
	c := &columnCodec{oid: oid, kind: kindText, m: v.m}
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID:
		c.kind = kindInt
	case pgtype.Float4OID, pgtype.Float8OID:
		c.kind = kindFloat
	case pgtype.BoolOID:
		c.kind = kindBool
	case pgtype.NumericOID:
		c.kind = kindNumeric
	case pgtype.TimestampOID, pgtype.TimestamptzOID, pgtype.DateOID:
		c.kind = kindTime
	case pgtype.ByteaOID:
		c.kind = kindBytes
	}
	v.codecs[oid] = c
	return c
}

// decode returns the typed value, or the text itself when pgtype cannot
// represent it; the error is reserved for a caller that wants to know.
func (c *columnCodec) decode(src []byte) (any, error) {
	switch c.kind {
	case kindText:
		return string(src), nil
	case kindInt:
		n, err := strconv.ParseInt(string(src), 10, 64)
		if err != nil {
			return string(src), nil
		}
		return n, nil
	case kindFloat:
		f, err := strconv.ParseFloat(string(src), 64)
		if err != nil {
			return string(src), nil
		}
		return f, nil
	case kindBool:
		var b pgtype.Bool
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &b); err != nil || !b.Valid {
			return string(src), nil
		}
		return b.Bool, nil
	case kindNumeric:
		var n pgtype.Numeric
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &n); err != nil || !n.Valid || n.NaN || n.InfinityModifier != pgtype.Finite {
			return string(src), nil
		}
		return n, nil
	case kindTime:
		return c.decodeTime(src), nil
	case kindBytes:
		var b []byte
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &b); err != nil {
			return string(src), nil
		}
		return b, nil
	}
	return string(src), nil
}

func (c *columnCodec) decodeTime(src []byte) any {
	switch c.oid {
	case pgtype.TimestampOID:
		var ts pgtype.Timestamp
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &ts); err != nil || !ts.Valid || ts.InfinityModifier != pgtype.Finite {
			return string(src)
		}
		return ts.Time.UTC()
	case pgtype.TimestamptzOID:
		var ts pgtype.Timestamptz
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &ts); err != nil || !ts.Valid || ts.InfinityModifier != pgtype.Finite {
			return string(src)
		}
		return ts.Time.UTC()
	default:
		var d pgtype.Date
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &d); err != nil || !d.Valid || d.InfinityModifier != pgtype.Finite {
			return string(src)
		}
		return time.Date(d.Time.Year(), d.Time.Month(), d.Time.Day(), 0, 0, 0, 0, time.UTC)
	}
}
