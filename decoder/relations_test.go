package decoder

import (
	"encoding/binary"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// The server re-sends a relation's Relation message after ANALYZE,
// autovacuum or DDL: the decoder's caches stay one entry per relation and
// per column type, however often it comes.
func TestRelationCachesDoNotGrow(t *testing.T) {
	relation := func(oid uint32, name string) []byte {
		b := binary.BigEndian.AppendUint32([]byte{'R'}, oid)
		b = append(b, "public\x00"+name+"\x00d"...)
		b = binary.BigEndian.AppendUint16(b, 2)
		for _, c := range []struct {
			name string
			typ  uint32
		}{{"id", pgtype.Int8OID}, {"payload", pgtype.JSONBOID}} {
			b = append(append(b, 0), c.name+"\x00"...)
			b = binary.BigEndian.AppendUint32(b, c.typ)
			b = binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
		}
		return b
	}
	d := New()
	for range 1000 {
		for _, m := range [][]byte{relation(16384, "event_outbox"), relation(16385, "other")} {
			if _, err := d.Decode(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(d.relations) != 2 || len(d.values.codecs) != 2 {
		t.Errorf("after 1000 re-sent Relation messages of 2 tables: %d relations, %d codecs; want 2 and 2",
			len(d.relations), len(d.values.codecs))
	}
}
