package sink

import (
	"encoding/binary"
	"math"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
)

// ColumnFingerprint holds each row's identity: a hash of the outbox values
// a row is born with. An id alone does not identify a row: a restarted
// sequence, a re-created outbox or a PostgreSQL failover (sequence values are
// WAL-logged ahead and can be handed out again) gives a new row an old id.
// "Already stored" is therefore decided on (id, fingerprint): a new row with
// an old id is delivered, never mistaken for the old one and marked
// processed without being in ClickHouse.
//
// Rows stored before the column existed hold 0 and are recognised by id
// alone, as before.
const ColumnFingerprint = "_fingerprint"

// identityColumns are the outbox columns a row is born with and that never
// change afterwards; status, attempts, last_error, updated_at and the
// daemon's own columns change while the row is delivered, so they are left
// out: the stream (values at insert) and a backfill or re-drive (values
// now) must hash the same row to the same fingerprint.
var identityColumns = []string{"id", "event_type", "event_date_time", "environment", "event_context", "metadata_version", "created_at"}

// identityIndexes returns the positions in rel of its identity columns.
func identityIndexes(rel *decoder.Relation) []int {
	var idx []int
	for _, name := range identityColumns {
		if i := rel.ColumnIndex(name); i >= 0 {
			idx = append(idx, i)
		}
	}
	return idx
}

// fingerprint hashes the identity values of a row (positions idx of values,
// as the decoder produces them). It is never 0, the mark of a row stored
// without one.
func fingerprint(h *xxhash.Digest, values []any, idx []int) uint64 {
	var buf [16]byte
	h.Reset()
	for _, i := range idx {
		// A type tag and a length keep ("ab", "c") apart from ("a", "bc").
		switch v := values[i].(type) {
		case nil:
			h.Write([]byte{0})
		case int64:
			buf[0] = 1
			binary.LittleEndian.PutUint64(buf[1:], uint64(v))
			h.Write(buf[:9])
		case float64:
			buf[0] = 2
			binary.LittleEndian.PutUint64(buf[1:], math.Float64bits(v))
			h.Write(buf[:9])
		case bool:
			buf[0], buf[1] = 3, 0
			if v {
				buf[1] = 1
			}
			h.Write(buf[:2])
		case time.Time:
			buf[0] = 4
			binary.LittleEndian.PutUint64(buf[1:], uint64(v.UnixMicro()))
			h.Write(buf[:9])
		case string:
			writeBytes(h, 5, buf[:], v)
		case []byte:
			writeBytes(h, 6, buf[:], string(v))
		case pgtype.Numeric:
			text, _ := v.MarshalJSON()
			writeBytes(h, 7, buf[:], string(text))
		default:
			writeBytes(h, 8, buf[:], "?")
		}
	}
	if sum := h.Sum64(); sum != 0 {
		return sum
	}
	return 1
}

func writeBytes(h *xxhash.Digest, tag byte, buf []byte, s string) {
	buf[0] = tag
	binary.LittleEndian.PutUint64(buf[1:], uint64(len(s)))
	h.Write(buf[:9])
	h.WriteString(s)
}

// Fingerprint is the identity of a row of rel (values as the decoder
// produces them), as Write stores it in _fingerprint: what `cdc verify`
// compares a stored row against when an id has several identities.
func Fingerprint(rel *decoder.Relation, values []any) uint64 {
	return fingerprint(xxhash.New(), values, identityIndexes(rel))
}
