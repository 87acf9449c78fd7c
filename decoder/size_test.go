package decoder_test

import (
	"runtime"
	"testing"

	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// TestRowSizeCoversDecodedRow: sink.Row.Size, which batch.max_bytes and the
// byte budget count in (DESIGN.md §3 invariant 14), is at least the heap a
// decoded outbox row really keeps (its values, their text, the Insert and
// the batch's Row), and not so far above it that max_bytes would cut
// batches much smaller than their memory allows (it is what bounds a
// grown batch at the defaults). Measured: 503 B of heap, Size 592 B for the
// benchmark's row with ~180 B of text (the decoder shares repeated values,
// such as a transaction's created_at, which Size cannot know).
func TestRowSizeCoversDecodedRow(t *testing.T) {
	d := decoder.New()
	if _, err := d.Decode(relationMessage(1, outboxRow)); err != nil {
		t.Fatal(err)
	}
	const n = 50_000
	msgs := benchMessages(n)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	rows := make([]sink.Row, 0, n)
	estimated := 0
	for _, m := range msgs {
		ev, err := d.Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		ins := ev.(*decoder.Insert)
		rows = append(rows, sink.Row{ID: 1, Relation: ins.Relation, Values: ins.Values})
		estimated += rows[len(rows)-1].Size()
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heap := float64(ms.HeapAlloc-before) / n
	size := float64(estimated) / n
	runtime.KeepAlive(rows)
	runtime.KeepAlive(msgs)
	t.Logf("per row: heap %.0f B, Size %.0f B", heap, size)
	if size < heap || size > 1.5*heap {
		t.Errorf("Size() %.0f B per row, heap %.0f B: want between 1 and 1.5 × the heap", size, heap)
	}
}
