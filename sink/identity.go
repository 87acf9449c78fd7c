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

// hasher computes fingerprints. It lays a row's identity values out in one
// buffer, kept across rows, and hashes that at once: the same bytes as
// hashing them value by value (the fingerprints of rows already stored must
// not change), without copying each small piece into a digest's block.
type hasher struct{ buf []byte }

// maxHasherBuf is the largest buffer a hasher keeps between rows.
const maxHasherBuf = 256 << 10

// fingerprint hashes the identity values of a row (positions idx of values,
// as the decoder produces them). It is never 0, the mark of a row stored
// without one.
func (h *hasher) fingerprint(values []any, idx []int) uint64 {
	b := h.buf[:0]
	for _, i := range idx {
		// A type tag and a length keep ("ab", "c") apart from ("a", "bc").
		switch v := values[i].(type) {
		case nil:
			b = append(b, 0)
		case int64:
			b = binary.LittleEndian.AppendUint64(append(b, 1), uint64(v))
		case float64:
			b = binary.LittleEndian.AppendUint64(append(b, 2), math.Float64bits(v))
		case bool:
			if v {
				b = append(b, 3, 1)
			} else {
				b = append(b, 3, 0)
			}
		case time.Time:
			b = binary.LittleEndian.AppendUint64(append(b, 4), uint64(v.UnixMicro()))
		case string:
			b = appendBytes(b, 5, v)
		case []byte:
			b = appendBytes(b, 6, string(v))
		case pgtype.Numeric:
			text, _ := v.MarshalJSON()
			b = appendBytes(b, 7, string(text))
		default:
			b = appendBytes(b, 8, "?")
		}
	}
	if cap(b) <= maxHasherBuf {
		h.buf = b
	} else {
		h.buf = nil // one huge row must not keep its size allocated for good
	}
	if sum := xxhash.Sum64(b); sum != 0 {
		return sum
	}
	return 1
}

func appendBytes(b []byte, tag byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(append(b, tag), uint64(len(s)))
	return append(b, s...)
}

// Fingerprint is the identity of a row of rel (values as the decoder
// produces them), as Write stores it in _fingerprint: what `cdc verify`
// compares a stored row against when an id has several identities.
func Fingerprint(rel *decoder.Relation, values []any) uint64 {
	return new(hasher).fingerprint(values, identityIndexes(rel))
}
