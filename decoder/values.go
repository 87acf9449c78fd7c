package decoder

import (
	"strconv"
	"time"
	"unsafe"

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
	return v.codecFor(oid).decode(text, nil)
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

// shareable reports whether values of this column may be shared between
// rows: they are immutable (a bytea value is a []byte, a numeric holds a
// *big.Int).
func (c *columnCodec) shareable() bool { return c.kind != kindBytes && c.kind != kindNumeric }

// decode returns the typed value, or the text itself when pgtype cannot
// represent it. With an arena the value's memory comes from it (see arena);
// with nil it is allocated on its own.
func (c *columnCodec) decode(src []byte, a *arena) any {
	switch c.kind {
	case kindInt:
		if n, ok := parseInt(src); ok {
			return a.int64(n)
		}
		n, err := strconv.ParseInt(string(src), 10, 64)
		if err != nil {
			return a.string(src)
		}
		return a.int64(n)
	case kindFloat:
		f, err := strconv.ParseFloat(string(src), 64)
		if err != nil {
			return a.string(src)
		}
		return a.float64(f)
	case kindBool:
		// The server writes booleans as t or f.
		if len(src) == 1 && (src[0] == 't' || src[0] == 'f') {
			return src[0] == 't'
		}
		var b pgtype.Bool
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &b); err != nil || !b.Valid {
			return a.string(src)
		}
		return b.Bool
	case kindNumeric:
		var n pgtype.Numeric
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &n); err != nil || !n.Valid || n.NaN || n.InfinityModifier != pgtype.Finite {
			return a.string(src)
		}
		return n
	case kindTime:
		if t, ok := parseTime(c.oid, src); ok {
			return a.time(t)
		}
		if t, ok := c.decodeTime(src); ok {
			return a.time(t)
		}
		return a.string(src)
	case kindBytes:
		var b []byte
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &b); err != nil {
			return a.string(src)
		}
		return b
	}
	return a.string(src)
}

// decodeTime is the general path (pgtype) for what parseTime leaves.
func (c *columnCodec) decodeTime(src []byte) (time.Time, bool) {
	switch c.oid {
	case pgtype.TimestampOID:
		var ts pgtype.Timestamp
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &ts); err != nil || !ts.Valid || ts.InfinityModifier != pgtype.Finite {
			return time.Time{}, false
		}
		return ts.Time.UTC(), true
	case pgtype.TimestamptzOID:
		var ts pgtype.Timestamptz
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &ts); err != nil || !ts.Valid || ts.InfinityModifier != pgtype.Finite {
			return time.Time{}, false
		}
		return ts.Time.UTC(), true
	default:
		var d pgtype.Date
		if err := c.m.Scan(c.oid, pgtype.TextFormatCode, src, &d); err != nil || !d.Valid || d.InfinityModifier != pgtype.Finite {
			return time.Time{}, false
		}
		return time.Date(d.Time.Year(), d.Time.Month(), d.Time.Day(), 0, 0, 0, 0, time.UTC), true
	}
}

// parseInt parses what the server writes for an integer: an optional minus
// and up to 18 digits (larger values take strconv's path).
func parseInt(src []byte) (int64, bool) {
	s := src
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	if len(s) == 0 || len(s) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// parseTime parses the common ISO forms the server writes with DateStyle ISO
// (the replication and backfill sessions set it): "YYYY-MM-DD" for date,
// "YYYY-MM-DD hh:mm:ss[.ffffff]" for timestamp, the same plus "+hh[:mm[:ss]]"
// for timestamptz. Anything else (other years, BC, infinity, more fraction
// digits) is left to pgtype, whose results these match.
func parseTime(oid uint32, s []byte) (time.Time, bool) {
	if len(s) < 10 || s[4] != '-' || s[7] != '-' {
		return time.Time{}, false
	}
	y, ok1 := digits(s[0:4])
	mo, ok2 := digits(s[5:7])
	d, ok3 := digits(s[8:10])
	if !ok1 || !ok2 || !ok3 || y == 0 || mo < 1 || mo > 12 || d < 1 || d > daysIn(time.Month(mo), y) {
		return time.Time{}, false
	}
	if oid == pgtype.DateOID {
		if len(s) != 10 {
			return time.Time{}, false
		}
		return time.Date(y, time.Month(mo), d, 0, 0, 0, 0, time.UTC), true
	}
	if len(s) < 19 || s[10] != ' ' || s[13] != ':' || s[16] != ':' {
		return time.Time{}, false
	}
	h, ok1 := digits(s[11:13])
	mi, ok2 := digits(s[14:16])
	sec, ok3 := digits(s[17:19])
	if !ok1 || !ok2 || !ok3 || h > 23 || mi > 59 || sec > 59 {
		return time.Time{}, false
	}
	rest := s[19:]
	ns := 0
	if len(rest) > 0 && rest[0] == '.' {
		n := 1
		for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
			n++
		}
		if n == 1 || n > 7 { // 1 to 6 digits
			return time.Time{}, false
		}
		f, _ := digits(rest[1:n])
		for i := n; i <= 9; i++ {
			f *= 10
		}
		ns = f
		rest = rest[n:]
	}
	t := time.Date(y, time.Month(mo), d, h, mi, sec, ns, time.UTC)
	if oid == pgtype.TimestampOID {
		if len(rest) != 0 {
			return time.Time{}, false
		}
		return t, true
	}
	// timestamptz: +hh, +hh:mm or +hh:mm:ss
	if len(rest) != 3 && len(rest) != 6 && len(rest) != 9 || (rest[0] != '+' && rest[0] != '-') {
		return time.Time{}, false
	}
	off := 0
	for i := 1; i < len(rest); i += 3 {
		if i > 1 && rest[i-1] != ':' {
			return time.Time{}, false
		}
		v, ok := digits(rest[i : i+2])
		if !ok {
			return time.Time{}, false
		}
		off = off*60 + v
	}
	for i := len(rest); i < 9; i += 3 {
		off *= 60
	}
	if rest[0] == '-' {
		off = -off
	}
	return t.Add(-time.Duration(off) * time.Second), true
}

func digits(s []byte) (int, bool) {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func daysIn(m time.Month, year int) int {
	switch m {
	case time.February:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case time.April, time.June, time.September, time.November:
		return 30
	}
	return 31
}

// arena hands out the memory of decoded rows in chunks, so that a row costs
// a few allocations per hundred rows instead of one or two per value: the
// text of every string value is copied into a shared byte chunk, and values
// are boxed into interfaces that point into typed chunks instead of each
// getting an allocation of its own. Nothing in a chunk is ever written twice
// and chunks are never reused: the garbage collector frees a chunk once the
// last row using it is gone, and every value stays immutable, as an interface
// value must. A nil *arena allocates every value on its own.
//
// A live row keeps its chunks alive, and with them every other row whose
// values share them: with one 64 KB string per row, one chunk of string
// headers pointed at 1024 rows, 64 MB, of which the pipeline might hold
// one. So the chunks are also let go after arenaSpan bytes of rows
// (account), and a live row pins at most about that much of other rows'
// memory (the memory bound: docs/configuration.md, Memory).
type arena struct {
	text    []byte
	strs    []string
	ints    []int64
	floats  []float64
	times   []time.Time
	anys    []any
	inserts []Insert
	// span is the bytes of rows decoded into the current chunks.
	span int
}

const (
	arenaSlots = 1024     // values per typed chunk
	arenaText  = 64 << 10 // bytes per text chunk
	arenaSpan  = 1 << 20  // bytes of rows after which the chunks are let go
)

// account records a row of n bytes decoded into the current chunks; after
// arenaSpan bytes the next value starts new chunks.
func (a *arena) account(n int) {
	a.span += n
	if a.span >= arenaSpan {
		*a = arena{}
	}
}

// eface is the layout of an empty interface: the value's type, and a pointer
// to the value (for the non-pointer types boxed here).
type eface struct {
	typ  unsafe.Pointer
	data unsafe.Pointer
}

func typeWord(v any) unsafe.Pointer { return (*eface)(unsafe.Pointer(&v)).typ }

var (
	stringType  = typeWord("")
	int64Type   = typeWord(int64(0))
	float64Type = typeWord(float64(0))
	timeType    = typeWord(time.Time{})
)

// box returns an interface of type typ whose value is *data.
func box(typ, data unsafe.Pointer) (v any) {
	e := (*eface)(unsafe.Pointer(&v))
	e.typ, e.data = typ, data
	return v
}

// bytes returns a string with a copy of b.
func (a *arena) bytes(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > arenaText/8 {
		return string(b)
	}
	if cap(a.text)-len(a.text) < len(b) {
		a.text = make([]byte, 0, arenaText)
	}
	off := len(a.text)
	a.text = append(a.text, b...)
	return unsafe.String(&a.text[off], len(b))
}

func (a *arena) string(b []byte) any {
	if a == nil {
		return string(b)
	}
	s := a.bytes(b)
	if len(a.strs) == cap(a.strs) {
		a.strs = make([]string, 0, arenaSlots)
	}
	a.strs = append(a.strs, s)
	return box(stringType, unsafe.Pointer(&a.strs[len(a.strs)-1]))
}

func (a *arena) int64(n int64) any {
	if a == nil || uint64(n) < 256 { // small values are boxed without allocating
		return n
	}
	if len(a.ints) == cap(a.ints) {
		a.ints = make([]int64, 0, arenaSlots)
	}
	a.ints = append(a.ints, n)
	return box(int64Type, unsafe.Pointer(&a.ints[len(a.ints)-1]))
}

func (a *arena) float64(f float64) any {
	if a == nil {
		return f
	}
	if len(a.floats) == cap(a.floats) {
		a.floats = make([]float64, 0, arenaSlots)
	}
	a.floats = append(a.floats, f)
	return box(float64Type, unsafe.Pointer(&a.floats[len(a.floats)-1]))
}

func (a *arena) time(t time.Time) any {
	if a == nil {
		return t
	}
	if len(a.times) == cap(a.times) {
		a.times = make([]time.Time, 0, arenaSlots)
	}
	a.times = append(a.times, t)
	return box(timeType, unsafe.Pointer(&a.times[len(a.times)-1]))
}

// values returns a zeroed slice of n values whose capacity is n, so an
// append by its owner never reaches a neighbour's values.
func (a *arena) values(n int) []any {
	if n > arenaSlots/4 {
		return make([]any, n)
	}
	if cap(a.anys)-len(a.anys) < n {
		a.anys = make([]any, 0, arenaSlots)
	}
	l := len(a.anys)
	a.anys = a.anys[:l+n]
	return a.anys[l : l+n : l+n]
}

func (a *arena) insert() *Insert {
	if len(a.inserts) == cap(a.inserts) {
		a.inserts = make([]Insert, 0, arenaSlots/8)
	}
	a.inserts = append(a.inserts, Insert{})
	return &a.inserts[len(a.inserts)-1]
}
