package sink

// Row sizes for the memory bound (docs/configuration.md, Memory). Every path
// (stream, backfill, re-drive) measures its rows with Row.Size, so that
// batch.max_bytes and the pipeline's byte budget see the memory a row really
// holds, whatever its origin.

const (
	// rowOverhead is a row's cost beyond its values: the Row itself and the
	// bookkeeping around it (source chunk slot, batch slot, converted
	// position columns).
	rowOverhead = 64
	// valueOverhead is each value's cost beyond its bytes: its interface in
	// Values, the boxed number or time (or string header) it points to, and
	// its entry in the sink's converted column.
	valueOverhead = 32
)

// Size is the approximate number of bytes r keeps in memory: the bytes of
// its text and bytea values plus a fixed overhead per row and per value.
// It walks the values once without allocating (the stream calls it for
// every row).
func (r *Row) Size() int {
	n := rowOverhead + valueOverhead*len(r.Values)
	for _, v := range r.Values {
		switch x := v.(type) {
		case string:
			n += len(x)
		case []byte:
			n += len(x)
		}
	}
	return n
}
