package decoder_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
)

// captured is one message of the capture in testdata/pgoutput.
type captured struct {
	name string // e.g. "003-Insert.hex"
	data []byte
}

// kind is the message kind in the file name ("Insert").
func (c captured) kind() string {
	k := strings.TrimSuffix(c.name, ".hex")
	return k[strings.IndexByte(k, '-')+1:]
}

func loadCapture(t testing.TB) (captureInfo, []captured) {
	t.Helper()
	js, err := os.ReadFile(filepath.Join(captureDir, captureMeta))
	if err != nil {
		t.Fatalf("read capture (regenerate with %s=1 go test ./decoder -run TestCapture): %v", captureEnv, err)
	}
	var info captureInfo
	if err := json.Unmarshal(js, &info); err != nil {
		t.Fatal(err)
	}
	var msgs []captured
	for _, f := range info.Files {
		h, err := os.ReadFile(filepath.Join(captureDir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		data, err := hex.DecodeString(strings.TrimSpace(string(h)))
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		msgs = append(msgs, captured{name: f.Name, data: data})
	}
	if len(msgs) == 0 {
		t.Fatal("empty capture")
	}
	return info, msgs
}

// find returns the first captured message of the given kind.
func find(t testing.TB, msgs []captured, kind string) captured {
	t.Helper()
	for _, m := range msgs {
		if m.kind() == kind {
			return m
		}
	}
	t.Fatalf("no %s message in the capture", kind)
	return captured{}
}

// The stream TestCapture produces: the first transaction (Type and Relation
// before its first row, a transactional message between rows 3 and 4), a
// non-transactional message, then a transaction after ALTER TABLE, which
// announces the relation again.
var wantKinds = []string{
	"Begin", "Type", "Relation", "Insert", "Insert", "Insert", "Message", "Insert", "Insert", "Insert", "Commit",
	"Message",
	"Begin", "Type", "Relation", "Insert", "Commit",
}

type wantColumn struct {
	name    string
	typeOID uint32 // 0: the enum (capture.json's mood_oid)
	typeMod int32
}

var wantColumns = []wantColumn{
	{"id", pgtype.Int8OID, -1},
	{"c_int4", pgtype.Int4OID, -1},
	{"c_int2", pgtype.Int2OID, -1},
	{"c_varchar", pgtype.VarcharOID, 255 + 4},
	{"c_text", pgtype.TextOID, -1},
	{"c_bpchar", pgtype.BPCharOID, 5 + 4},
	{"c_timestamp", pgtype.TimestampOID, -1},
	{"c_timestamptz", pgtype.TimestamptzOID, -1},
	{"c_date", pgtype.DateOID, -1},
	{"c_jsonb", pgtype.JSONBOID, -1},
	{"c_json", pgtype.JSONOID, -1},
	{"c_numeric", pgtype.NumericOID, -1},
	{"c_numeric_20_6", pgtype.NumericOID, (20<<16 | 6) + 4},
	{"c_float8", pgtype.Float8OID, -1},
	{"c_float4", pgtype.Float4OID, -1},
	{"c_bool", pgtype.BoolOID, -1},
	{"c_bytea", pgtype.ByteaOID, -1},
	{"c_uuid", pgtype.UUIDOID, -1},
	{"c_inet", pgtype.InetOID, -1},
	{"c_interval", pgtype.IntervalOID, -1},
	{"c_mood", 0, -1},
}

// Expected values that need more than == to compare.
type (
	wantNumeric string  // exact decimal value
	wantFloat   float64 // same bits (NaN: any NaN)
)

func utc(year int, month time.Month, day, hour, min, sec, usec int) time.Time {
	return time.Date(year, month, day, hour, min, sec, usec*1000, time.UTC)
}

func nulls(n int) []any { return make([]any, n) }

func row(vals ...any) []any {
	var out []any
	for _, v := range vals {
		if vs, ok := v.([]any); ok {
			out = append(out, vs...)
			continue
		}
		out = append(out, v)
	}
	return out
}

// wantRows are the decoded values of the first transaction's rows, in
// column order (see captureRows for the SQL).
var wantRows = []struct {
	name   string
	values []any
}{
	{"typical", row(
		int64(1), int64(2147483647), int64(-32768), "order.created", "hello world", "ab   ",
		utc(2024, 2, 29, 23, 59, 59, 123456), utc(2024, 2, 29, 18, 29, 59, 654321), utc(2024, 2, 29, 0, 0, 0, 0),
		// jsonb is normalised by the server (key order, spacing, numbers
		// as numeric) and must reach us byte for byte.
		`{"a": "ünïcødé ✓", "b": {"nested": [1, 2.50, {"x": null, "ü": "日本"}]}, "big": 12345678901234567890.5, "neg": -0.0000001}`,
		`{ "z" : 1,"a":[1.10, 12345678901234567890.5] , "dup":1, "dup":2 }`,
		wantNumeric("12345678901234567890123456789.123456789"), wantNumeric("-0.000001"),
		wantFloat(1e-300), wantFloat(3.14), true,
		[]byte{0x00, 0xff, 0x10}, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "192.168.0.1/24", "1 day 02:03:04.5", "happy",
	)},
	{"nulls", row(int64(2), nulls(20))},
	{"empty and zero", row(
		int64(3), int64(0), int64(0), "", "", "     ",
		utc(2000, 1, 1, 0, 0, 0, 0), utc(1970, 1, 1, 0, 0, 0, 0), utc(2000, 1, 1, 0, 0, 0, 0),
		`{}`, `""`, wantNumeric("0"), wantNumeric("0"), wantFloat(math.Copysign(0, -1)), wantFloat(0), false,
		[]byte{}, "00000000-0000-0000-0000-000000000000", "::1", "00:00:00", "sad",
	)},
	{"unicode", row(
		int64(4), nil, nil, "événement.créé 🎉", "Ünïcödé 日本語 🎉 \"quoted\" \\ back\\slash\nnew line\ttab", "é    ",
		nil, nil, nil,
		`{"u": "é", "esc": "a\"b\\c\n", "emoji": "🎉"}`,
		`{"emoji": "🎉", "esc": "a\"b\\c\n", "u": "\u00e9"}`,
		nulls(5), []byte("€"), nulls(4),
	)},
	{"extremes", row(
		int64(math.MaxInt64), int64(math.MinInt32), int64(math.MaxInt16), "x", "y", "abcde",
		// 44 BC is astronomical year -43.
		utc(-43, 3, 15, 12, 0, 0, 0), utc(9999, 12, 31, 23, 59, 59, 999999), utc(1, 1, 1, 0, 0, 0, 0),
		`[12345678901234567890.5, -0.000000000000000000001, 1000000000000000000000000000000]`, `[1E+30]`,
		wantNumeric("-98765432109876543210.0000000001"), wantNumeric("99999999999999.999999"),
		wantFloat(math.MaxFloat64), wantFloat(-3.4028235e38), true,
		[]byte{}, "ffffffff-ffff-ffff-ffff-ffffffffffff", "2001:db8::/32", "-178000000 years", "happy",
	)},
	{"untypable stays text", row(
		int64(6), nulls(5), "infinity", "-infinity", "infinity", "null", "null", "NaN", nil,
		wantFloat(math.NaN()), wantFloat(math.Inf(1)), nil, nulls(5),
	)},
}

// wantRowTxn2 is the row inserted after ALTER TABLE ... ADD COLUMN c_added.
var wantRowTxn2 = row(int64(100), nil, nil, nil, "after alter", nulls(16), "added")

// checkValue reports how got differs from want, or "".
func checkValue(want, got any) string {
	switch w := want.(type) {
	case nil:
		if got != nil {
			return fmt.Sprintf("got %#v, want NULL", got)
		}
	case wantNumeric:
		n, ok := got.(pgtype.Numeric)
		if !ok || !n.Valid || n.NaN || n.InfinityModifier != pgtype.Finite || n.Int == nil {
			return fmt.Sprintf("got %#v, want numeric %s", got, w)
		}
		wr, ok := new(big.Rat).SetString(string(w))
		if !ok {
			panic("bad wantNumeric " + string(w))
		}
		gr := new(big.Rat).SetInt(n.Int)
		scale := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(abs(n.Exp))), nil)
		if n.Exp >= 0 {
			gr.Mul(gr, new(big.Rat).SetInt(scale))
		} else {
			gr.Quo(gr, new(big.Rat).SetInt(scale))
		}
		if gr.Cmp(wr) != 0 {
			return fmt.Sprintf("got numeric %s×10^%d, want %s", n.Int, n.Exp, w)
		}
	case wantFloat:
		f, ok := got.(float64)
		switch {
		case !ok:
			return fmt.Sprintf("got %#v (%T), want float64 %v", got, got, float64(w))
		case math.IsNaN(float64(w)):
			if !math.IsNaN(f) {
				return fmt.Sprintf("got %v, want NaN", f)
			}
		case math.Float64bits(f) != math.Float64bits(float64(w)):
			return fmt.Sprintf("got %v (bits %x), want %v (bits %x)", f, math.Float64bits(f), float64(w), math.Float64bits(float64(w)))
		}
	case time.Time:
		g, ok := got.(time.Time)
		if !ok {
			return fmt.Sprintf("got %#v (%T), want time %s", got, got, w)
		}
		if g.Location() != time.UTC || !g.Equal(w) {
			return fmt.Sprintf("got %s (%s), want %s UTC", g.Format(time.RFC3339Nano), g.Location(), w.Format(time.RFC3339Nano))
		}
	case []byte:
		g, ok := got.([]byte)
		if !ok || g == nil || !bytes.Equal(g, w) {
			return fmt.Sprintf("got %#v (%T), want []byte %#v", got, got, w)
		}
	default:
		if fmt.Sprintf("%T", got) != fmt.Sprintf("%T", want) || got != want {
			return fmt.Sprintf("got %#v (%T), want %#v (%T)", got, got, want, want)
		}
	}
	return ""
}

func abs(n int32) int32 {
	if n < 0 {
		return -n
	}
	return n
}

func checkValues(t *testing.T, what string, want, got []any, cols []decoder.Column) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if diff := checkValue(want[i], got[i]); diff != "" {
			t.Errorf("%s: column %s: %s", what, cols[i].Name, diff)
		}
	}
}

func mustLSN(t *testing.T, s string) pglogrepl.LSN {
	t.Helper()
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// TestDecodeCapture replays the real pgoutput stream through one Decoder
// and checks every decoded event.
func TestDecodeCapture(t *testing.T) {
	info, msgs := loadCapture(t)
	if len(msgs) != len(wantKinds) {
		t.Fatalf("capture has %d messages, want %d", len(msgs), len(wantKinds))
	}
	startLSN, endLSN := mustLSN(t, info.StartLSN), mustLSN(t, info.EndLSN)
	inRange := func(what string, lsn pglogrepl.LSN) {
		t.Helper()
		if lsn < startLSN || lsn > endLSN {
			t.Errorf("%s %s outside the captured WAL range [%s, %s]", what, lsn, startLSN, endLSN)
		}
	}

	d := decoder.New()
	var (
		rels    []*decoder.Relation
		begins  []*decoder.Begin
		commits []*decoder.Commit
		inserts [][]*decoder.Insert // per transaction
		txnMsgs []*decoder.Message
		nonTxn  []*decoder.Message
	)
	for i, m := range msgs {
		if m.kind() != wantKinds[i] {
			t.Fatalf("message %d is %s, want %s", i, m.name, wantKinds[i])
		}
		ev, err := d.Decode(m.data)
		if err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		switch e := ev.(type) {
		case nil:
			if m.kind() != "Type" {
				t.Fatalf("%s: nil event", m.name)
			}
		case *decoder.Relation:
			rels = append(rels, e)
		case *decoder.Begin:
			begins = append(begins, e)
			inserts = append(inserts, nil)
		case *decoder.Insert:
			inserts[len(inserts)-1] = append(inserts[len(inserts)-1], e)
		case *decoder.Message:
			if e.Transactional {
				txnMsgs = append(txnMsgs, e)
			} else {
				nonTxn = append(nonTxn, e)
			}
		case *decoder.Commit:
			commits = append(commits, e)
		default:
			t.Fatalf("%s: unexpected event %T", m.name, ev)
		}
		if got, want := fmt.Sprintf("%T", ev), map[string]string{
			"Begin": "*decoder.Begin", "Type": "<nil>", "Relation": "*decoder.Relation", "Insert": "*decoder.Insert",
			"Message": "*decoder.Message", "Commit": "*decoder.Commit",
		}[m.kind()]; got != want {
			t.Errorf("%s decoded to %s, want %s", m.name, got, want)
		}
	}

	t.Run("relations", func(t *testing.T) {
		if len(rels) != 2 {
			t.Fatalf("%d relations, want 2", len(rels))
		}
		for i, rel := range rels {
			want := wantColumns
			if i == 1 {
				want = append(append([]wantColumn{}, wantColumns...), wantColumn{"c_added", pgtype.TextOID, -1})
			}
			if rel.ID != info.TableOID || rel.Namespace != "public" || rel.Name != "event_outbox" || rel.QualifiedName() != "public.event_outbox" {
				t.Errorf("relation %d: %d %s, want %d public.event_outbox", i, rel.ID, rel.QualifiedName(), info.TableOID)
			}
			if len(rel.Columns) != len(want) {
				t.Fatalf("relation %d: %d columns, want %d", i, len(rel.Columns), len(want))
			}
			for j, c := range rel.Columns {
				w := want[j]
				if w.typeOID == 0 {
					w.typeOID = info.MoodOID
				}
				if c.Name != w.name || c.TypeOID != w.typeOID || c.TypeMod != w.typeMod || c.Key != (j == 0) {
					t.Errorf("relation %d column %d: %+v, want {Name:%s TypeOID:%d TypeMod:%d Key:%v}", i, j, c, w.name, w.typeOID, w.typeMod, j == 0)
				}
				if got := rel.ColumnIndex(w.name); got != j {
					t.Errorf("ColumnIndex(%q) = %d, want %d", w.name, got, j)
				}
			}
			if got := rel.ColumnIndex("nope"); got != -1 {
				t.Errorf("ColumnIndex(nope) = %d", got)
			}
		}
		if rels[0] == rels[1] {
			t.Error("the second Relation message must replace the cached relation, not mutate it")
		}
	})

	t.Run("transactions", func(t *testing.T) {
		if len(begins) != 2 || len(commits) != 2 || len(info.Txns) != 2 {
			t.Fatalf("%d begins, %d commits, %d captured txns; want 2 each", len(begins), len(commits), len(info.Txns))
		}
		for i := range begins {
			b, c, txn := begins[i], commits[i], info.Txns[i]
			if b.FinalLSN != c.CommitLSN {
				t.Errorf("txn %d: Begin.FinalLSN %s != Commit.CommitLSN %s", i, b.FinalLSN, c.CommitLSN)
			}
			if c.EndLSN <= c.CommitLSN {
				t.Errorf("txn %d: Commit.EndLSN %s must be past CommitLSN %s", i, c.EndLSN, c.CommitLSN)
			}
			inRange("CommitLSN", c.CommitLSN)
			inRange("EndLSN", c.EndLSN)
			if i > 0 && b.FinalLSN <= commits[i-1].EndLSN {
				t.Errorf("txn %d: FinalLSN %s not after the previous EndLSN %s", i, b.FinalLSN, commits[i-1].EndLSN)
			}
			if b.Xid != txn.Xid {
				t.Errorf("txn %d: xid %d, want %d", i, b.Xid, txn.Xid)
			}
			for what, ct := range map[string]time.Time{"Begin": b.CommitTime, "Commit": c.CommitTime} {
				if ct.Location() != time.UTC {
					t.Errorf("txn %d: %s.CommitTime in %s, want UTC", i, what, ct.Location())
				}
				if ct.Before(txn.NotBefore) || ct.After(txn.NotAfter) || ct.Nanosecond()%1000 != 0 {
					t.Errorf("txn %d: %s.CommitTime %s outside [%s, %s]", i, what, ct.Format(time.RFC3339Nano),
						txn.NotBefore.Format(time.RFC3339Nano), txn.NotAfter.Format(time.RFC3339Nano))
				}
			}
			if !b.CommitTime.Equal(c.CommitTime) {
				t.Errorf("txn %d: Begin.CommitTime %s != Commit.CommitTime %s", i, b.CommitTime, c.CommitTime)
			}
		}
	})

	t.Run("messages", func(t *testing.T) {
		if len(txnMsgs) != 1 || len(nonTxn) != 1 {
			t.Fatalf("%d transactional and %d non-transactional messages, want 1 each", len(txnMsgs), len(nonTxn))
		}
		m := txnMsgs[0]
		if m.Prefix != "cdc" || string(m.Content) != captureHeartbeat {
			t.Errorf("transactional message %q %q, want %q %q", m.Prefix, m.Content, "cdc", captureHeartbeat)
		}
		if m.LSN < startLSN || m.LSN >= commits[0].CommitLSN {
			t.Errorf("transactional message LSN %s not inside its transaction (commit %s)", m.LSN, commits[0].CommitLSN)
		}
		n := nonTxn[0]
		if n.Prefix != captureNonTxnPref || !bytes.Equal(n.Content, captureNonTxnContent) {
			t.Errorf("non-transactional message %q %x, want %q %x", n.Prefix, n.Content, captureNonTxnPref, captureNonTxnContent)
		}
		if n.LSN < commits[0].EndLSN || n.LSN >= begins[1].FinalLSN {
			t.Errorf("non-transactional message LSN %s not between the transactions (%s, %s)", n.LSN, commits[0].EndLSN, begins[1].FinalLSN)
		}
	})

	t.Run("rows", func(t *testing.T) {
		if len(inserts) != 2 || len(inserts[0]) != len(wantRows) || len(inserts[1]) != 1 {
			t.Fatalf("inserts per transaction: %d, want [%d 1]", len(inserts), len(wantRows))
		}
		for i, w := range wantRows {
			ins := inserts[0][i]
			if ins.Relation != rels[0] {
				t.Errorf("%s: row points to %p, want the first relation %p", w.name, ins.Relation, rels[0])
			}
			checkValues(t, w.name, w.values, ins.Values, rels[0].Columns)
		}
		ins := inserts[1][0]
		if ins.Relation != rels[1] {
			t.Errorf("row after ALTER TABLE points to %p, want the new relation %p", ins.Relation, rels[1])
		}
		checkValues(t, "after alter", wantRowTxn2, ins.Values, rels[1].Columns)
	})
}

// TestDecodeDoesNotRetainInput: the stream reuses its read buffer, so no
// event may alias the message bytes.
func TestDecodeDoesNotRetainInput(t *testing.T) {
	_, msgs := loadCapture(t)
	d := decoder.New()
	var events []string
	var evs []decoder.Event
	for _, m := range msgs {
		buf := append([]byte{}, m.data...)
		ev, err := d.Decode(buf)
		if err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		events = append(events, describe(ev))
		evs = append(evs, ev)
		for i := range buf {
			buf[i] = 0xAA
		}
	}
	for i, ev := range evs {
		if got := describe(ev); got != events[i] {
			t.Errorf("%s changed after its input was overwritten:\n got %s\nwant %s", msgs[i].name, got, events[i])
		}
	}
}

func describe(ev decoder.Event) string {
	if ins, ok := ev.(*decoder.Insert); ok {
		var sb strings.Builder
		for _, v := range ins.Values {
			if n, ok := v.(pgtype.Numeric); ok {
				fmt.Fprintf(&sb, "numeric(%s e%d) ", n.Int, n.Exp)
				continue
			}
			fmt.Fprintf(&sb, "%#v ", v)
		}
		return sb.String()
	}
	return fmt.Sprintf("%+v", ev)
}

// primed returns a Decoder that has seen the capture's first Relation.
func primed(t testing.TB, msgs []captured) *decoder.Decoder {
	t.Helper()
	d := decoder.New()
	if _, err := d.Decode(find(t, msgs, "Relation").data); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDecodeTruncated cuts every captured message at every byte: each prefix
// must be an error (never a panic, never a half-decoded event), and a broken
// Relation must not replace the cached one.
func TestDecodeTruncated(t *testing.T) {
	_, msgs := loadCapture(t)
	insert := find(t, msgs, "Insert")
	for _, m := range msgs {
		t.Run(m.name, func(t *testing.T) {
			d := primed(t, msgs)
			for n := 0; n < len(m.data); n++ {
				ev, err := d.Decode(m.data[:n:n])
				if err == nil {
					t.Fatalf("%d of %d bytes: no error, event %+v", n, len(m.data), ev)
				}
				if ev != nil {
					t.Fatalf("%d of %d bytes: event %T together with error %v", n, len(m.data), ev, err)
				}
				if m.kind() == "Relation" {
					if _, err := d.Decode(insert.data); err != nil {
						t.Fatalf("after a Relation truncated to %d bytes, the cached relation is gone: %v", n, err)
					}
				}
			}
		})
	}
}

// TestDecodeTrailingBytes: a message longer than its fields is not what we
// think it is (another protocol version, a desynchronised stream).
func TestDecodeTrailingBytes(t *testing.T) {
	_, msgs := loadCapture(t)
	for _, m := range msgs {
		for _, extra := range [][]byte{{0}, {'x'}, {0, 0, 0, 0}} {
			d := primed(t, msgs)
			data := append(append([]byte{}, m.data...), extra...)
			if ev, err := d.Decode(data); err == nil || ev != nil {
				t.Errorf("%s + %x: event %T, error %v; want an error only", m.name, extra, ev, err)
			}
		}
	}
}

// mutate returns a copy of data changed by f.
func mutate(data []byte, f func(b []byte) []byte) []byte {
	return f(append([]byte{}, data...))
}

func TestDecodeMalformed(t *testing.T) {
	_, msgs := loadCapture(t)
	insert := find(t, msgs, "Insert").data // row 1: every column 't'
	relation := find(t, msgs, "Relation").data
	message := find(t, msgs, "Message").data
	begin := find(t, msgs, "Begin").data
	commit := find(t, msgs, "Commit").data
	typ := find(t, msgs, "Type").data

	// Offsets in an Insert: 'I', relation id [1:5], 'N' [5], column count
	// [6:8], first column kind [8], its length [9:13].
	ncols := binary.BigEndian.Uint16(insert[6:8])
	// Offsets in a Relation: column count right after the second string's
	// NUL and the replica identity byte.
	relCount := bytes.IndexByte(relation[5:], 0) + 5 + 1
	relCount += bytes.IndexByte(relation[relCount:], 0) + 1 + 1
	// Offsets in a Message: 'M', flags, LSN [2:10], prefix, length.
	msgLen := 10 + bytes.IndexByte(message[10:], 0) + 1

	tests := []struct {
		name string
		data []byte
		// fresh: decode with a decoder that has seen no Relation.
		fresh bool
		is    error
	}{
		{name: "empty message", data: []byte{}},
		{name: "nil message", data: nil},
		{name: "unknown message type", data: []byte{'Z', 0, 0, 0, 0}},
		{name: "stream start (protocol 2)", data: []byte{'S', 0, 0, 0, 1, 1}},
		{name: "stream commit (protocol 2)", data: append([]byte{'c', 0, 0, 0, 1}, commit[1:]...)},
		{name: "stream abort (protocol 2)", data: []byte{'A', 0, 0, 0, 1, 0, 0, 0, 1}},
		{name: "begin prepare (protocol 3)", data: append([]byte{'b'}, begin[1:]...)},
		{name: "NUL type byte", data: []byte{0}},

		{name: "insert before any relation", data: insert, fresh: true, is: decoder.ErrUnknownRelation},
		{name: "insert with unknown relation id", is: decoder.ErrUnknownRelation, data: mutate(insert, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[1:], 0xdeadbeef)
			return b
		})},
		{name: "insert with one column too few", data: mutate(insert, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[6:], ncols-1)
			return b
		})},
		{name: "insert with one column too many", data: mutate(insert, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[6:], ncols+1)
			return b
		})},
		{name: "insert with zero columns", data: mutate(insert, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[6:], 0)
			return b[:8]
		})},
		{name: "insert with an old-key tuple", data: mutate(insert, func(b []byte) []byte { b[5] = 'K'; return b })},
		{name: "insert with an old tuple", data: mutate(insert, func(b []byte) []byte { b[5] = 'O'; return b })},
		{name: "unknown tuple column kind", data: mutate(insert, func(b []byte) []byte { b[8] = 'x'; return b })},
		{name: "unchanged-toast column in an insert", data: mutate(insert, func(b []byte) []byte {
			return append(append(b[:8:8], 'u'), b[13+binary.BigEndian.Uint32(b[9:]):]...)
		})},
		{name: "binary column", data: mutate(insert, func(b []byte) []byte { b[8] = 'b'; return b })},
		{name: "column length past the end", data: mutate(insert, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[9:], uint32(len(b)))
			return b
		})},
		{name: "column length 2^31", data: mutate(insert, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[9:], 1<<31)
			return b
		})},
		{name: "column length 2^32-1", data: mutate(insert, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[9:], math.MaxUint32)
			return b
		})},
		{name: "insert missing its last column", data: mutate(insert, func(b []byte) []byte {
			// The last column (the enum, 'happy') is 1+4+5 bytes.
			return b[:len(b)-10]
		})},

		{name: "relation announcing one column more", data: mutate(relation, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[relCount:], binary.BigEndian.Uint16(b[relCount:])+1)
			return b
		})},
		{name: "relation announcing one column less", data: mutate(relation, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[relCount:], binary.BigEndian.Uint16(b[relCount:])-1)
			return b
		})},
		{name: "relation announcing 65535 columns", data: mutate(relation, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[relCount:], math.MaxUint16)
			return b
		})},
		{name: "relation without NUL after its name", data: relation[:bytes.IndexByte(relation[5:], 0)+5]},
		{name: "relation column name without NUL", data: mutate(relation, func(b []byte) []byte {
			return b[:relCount+2+1+len("id")]
		})},

		{name: "message content longer than announced", data: mutate(message, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[msgLen:], binary.BigEndian.Uint32(b[msgLen:])-1)
			return b
		})},
		{name: "message content shorter than announced", data: mutate(message, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[msgLen:], binary.BigEndian.Uint32(b[msgLen:])+1)
			return b
		})},
		{name: "message content length 2^32-1", data: mutate(message, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[msgLen:], math.MaxUint32)
			return b
		})},
		{name: "message prefix without NUL", data: message[:msgLen-1]},
		{name: "message prefix without NUL, long", data: append(append([]byte{}, message[:10]...), bytes.Repeat([]byte{'p'}, 40)...)},

		{name: "begin one byte short", data: begin[:len(begin)-1]},
		{name: "commit one byte short", data: commit[:len(commit)-1]},
		{name: "type without NUL", data: typ[:len(typ)-1]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decoder.New()
			if !tt.fresh {
				d = primed(t, msgs)
			}
			ev, err := d.Decode(tt.data)
			if err == nil {
				t.Fatalf("no error; event %+v", ev)
			}
			if ev != nil {
				t.Errorf("event %T returned with error %v", ev, err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v, want errors.Is %v", err, tt.is)
			}
			if !strings.HasPrefix(err.Error(), "pgoutput: ") {
				t.Errorf("error %q does not say where it comes from", err)
			}
		})
	}
}

// TestDecodeIgnored: messages the pipeline does not need decode to nothing.
func TestDecodeIgnored(t *testing.T) {
	_, msgs := loadCapture(t)
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"type", find(t, msgs, "Type").data},
		{"origin", append([]byte{'O', 0, 0, 0, 0, 0, 0, 0, 1}, "origin\x00"...)},
		{"update", []byte{'U', 0, 0, 0, 1, 'N', 0, 0}},
		{"delete", []byte{'D', 0, 0, 0, 1, 'K', 0, 0}},
		{"truncate", []byte{'T', 0, 0, 0, 1, 0, 0, 0, 0, 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := primed(t, msgs).Decode(tt.data)
			if ev != nil || err != nil {
				t.Errorf("got %T, %v; want nil, nil", ev, err)
			}
		})
	}
}

// TestDecodeRelationReplaced: a new Relation for the same id (after DDL)
// changes how later rows decode; rows decoded before keep the old one.
func TestDecodeRelationReplaced(t *testing.T) {
	_, msgs := loadCapture(t)
	var rels []captured
	for _, m := range msgs {
		if m.kind() == "Relation" {
			rels = append(rels, m)
		}
	}
	oldRow, newRow := find(t, msgs, "Insert").data, msgs[len(msgs)-2].data
	d := decoder.New()
	if _, err := d.Decode(rels[1].data); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Decode(oldRow); err == nil {
		t.Error("a 21-column row decoded against the 22-column relation")
	}
	if _, err := d.Decode(newRow); err != nil {
		t.Errorf("22-column row: %v", err)
	}
	ev, err := d.Decode(rels[0].data)
	if err != nil {
		t.Fatal(err)
	}
	ins, err := d.Decode(oldRow)
	if err != nil {
		t.Fatal(err)
	}
	if ins.(*decoder.Insert).Relation != ev.(*decoder.Relation) {
		t.Error("row does not point at the relation announced last")
	}
	if _, err := d.Decode(newRow); err == nil {
		t.Error("a 22-column row decoded against the 21-column relation")
	}
}

// TestValueDecoderFallback: text the Go types cannot hold stays text (the
// sink rejects that row) instead of failing the stream.
func TestValueDecoderFallback(t *testing.T) {
	v := decoder.NewValueDecoder()
	for _, tt := range []struct {
		oid  uint32
		text string
		want any
	}{
		{pgtype.Int8OID, "9223372036854775808", "9223372036854775808"},
		{pgtype.Int4OID, "", ""},
		{pgtype.Int2OID, "12", int64(12)},
		{pgtype.OIDOID, "4294967295", int64(4294967295)},
		{pgtype.Float8OID, "1e400", "1e400"},
		{pgtype.Float8OID, "-Infinity", wantFloat(math.Inf(-1))},
		{pgtype.BoolOID, "maybe", "maybe"},
		{pgtype.BoolOID, "f", false},
		{pgtype.NumericOID, "Infinity", "Infinity"},
		{pgtype.NumericOID, "-Infinity", "-Infinity"},
		{pgtype.NumericOID, "1.2.3", "1.2.3"},
		{pgtype.TimestampOID, "2024-13-01 00:00:00", "2024-13-01 00:00:00"},
		{pgtype.TimestampOID, "2024-01-01 00:00:00.1234567", utc(2024, 1, 1, 0, 0, 0, 123457)},
		{pgtype.TimestamptzOID, "2024-01-01 00:00:00-08", utc(2024, 1, 1, 8, 0, 0, 0)},
		{pgtype.TimestamptzOID, "-infinity", "-infinity"},
		{pgtype.DateOID, "2023-02-29", "2023-02-29"},
		{pgtype.DateOID, "5874897-12-31", utc(5874897, 12, 31, 0, 0, 0, 0)},
		{pgtype.ByteaOID, `\xzz`, `\xzz`},
		{pgtype.ByteaOID, `\x0A0b`, []byte{0x0a, 0x0b}},
		{pgtype.JSONBOID, `{"n": 1.0}`, `{"n": 1.0}`},
		{pgtype.UUIDOID, "not-a-uuid", "not-a-uuid"},
		{999999, "whatever", "whatever"},
	} {
		got := v.Decode(tt.oid, []byte(tt.text))
		if diff := checkValue(tt.want, got); diff != "" {
			t.Errorf("Decode(%d, %q): %s", tt.oid, tt.text, diff)
		}
	}
}
