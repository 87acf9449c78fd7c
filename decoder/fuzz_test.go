package decoder_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
)

// FuzzDecode feeds arbitrary messages to a Decoder that already knows the
// captured relation (so Insert seeds reach the value codecs of every column
// type). Decode must never panic; a nil error must come with an event of the
// message's kind, or with nil for the kinds the pipeline ignores; an error
// must come without an event.
//
//	go test ./decoder -run xxx -fuzz FuzzDecode -fuzztime 60s
//
// Crashers land in testdata/fuzz/FuzzDecode and then run with every go test.
func FuzzDecode(f *testing.F) {
	_, msgs := loadCapture(f)
	relation := find(f, msgs, "Relation").data
	for _, m := range msgs {
		f.Add(m.data)
	}
	// A few hand-made shapes the capture does not have.
	f.Add([]byte{})
	f.Add([]byte{'I', 0, 0, 0, 0, 'N', 0, 0})
	f.Add([]byte{'O', 0, 0, 0, 0, 0, 0, 0, 1, 'o', 0})
	f.Add([]byte{'M', 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0})
	f.Add([]byte{'R', 0, 0, 0, 1, 0, 't', 0, 'd', 0, 0})

	ignored := map[byte]bool{'Y': true, 'O': true, 'U': true, 'D': true, 'T': true}
	wantType := map[byte]string{
		'B': "*decoder.Begin", 'C': "*decoder.Commit", 'R': "*decoder.Relation",
		'I': "*decoder.Insert", 'M': "*decoder.Message",
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		d := decoder.New()
		if _, err := d.Decode(relation); err != nil {
			t.Fatal(err)
		}
		in := append([]byte{}, data...)
		ev, err := d.Decode(in)
		if err != nil {
			if ev != nil {
				t.Fatalf("event %T returned with error %v", ev, err)
			}
			return
		}
		if ev == nil {
			if len(data) == 0 || !ignored[data[0]] {
				t.Fatalf("nil event and nil error for a %q message", data[:min(1, len(data))])
			}
			return
		}
		if got := fmt.Sprintf("%T", ev); got != wantType[data[0]] {
			t.Fatalf("%q message decoded to %s", data[0], got)
		}
		switch e := ev.(type) {
		case *decoder.Insert:
			if e.Relation == nil || len(e.Values) != len(e.Relation.Columns) {
				t.Fatalf("insert with %d values for relation %+v", len(e.Values), e.Relation)
			}
			for i, v := range e.Values {
				switch v := v.(type) {
				case nil, int64, float64, bool, pgtype.Numeric, []byte, string:
				case time.Time:
					if v.Location() != time.UTC {
						t.Fatalf("column %d: time not in UTC: %v", i, v)
					}
				default:
					t.Fatalf("column %d: value of type %T", i, v)
				}
			}
		case *decoder.Relation:
			// A decoded Relation is cached: an insert of all-NULL columns
			// must now decode against it.
			row := []byte{'I', 0, 0, 0, 0, 'N', byte(len(e.Columns) >> 8), byte(len(e.Columns))}
			row[1], row[2], row[3], row[4] = byte(e.ID>>24), byte(e.ID>>16), byte(e.ID>>8), byte(e.ID)
			for range e.Columns {
				row = append(row, 'n')
			}
			ins, err := d.Decode(row)
			if err != nil || ins.(*decoder.Insert).Relation != e {
				t.Fatalf("insert after relation %d: %v", e.ID, err)
			}
		}
		// The event must not alias the input.
		before := describe(ev)
		for i := range in {
			in[i] ^= 0xff
		}
		if after := describe(ev); after != before {
			t.Fatalf("event changed with its input:\n%s\n%s", before, after)
		}
	})
}
