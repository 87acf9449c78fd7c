package sink

import (
	"testing"
	"time"
)

// TestRowSize: a row's size is its text and bytea bytes plus a fixed
// overhead per row and per value, whatever else the values are.
func TestRowSize(t *testing.T) {
	big := string(make([]byte, 64<<10))
	tests := []struct {
		name   string
		values []any
		want   int
	}{
		{name: "no values", values: nil, want: rowOverhead},
		{name: "numbers, times, NULL", values: []any{int64(1), 2.5, time.Unix(0, 0), nil, true}, want: rowOverhead + 5*valueOverhead},
		{name: "strings", values: []any{"abc", ""}, want: rowOverhead + 2*valueOverhead + 3},
		{name: "bytea", values: []any{[]byte("12345")}, want: rowOverhead + valueOverhead + 5},
		{name: "64 KB payload", values: []any{int64(7), "order.created", big}, want: rowOverhead + 3*valueOverhead + 13 + 64<<10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Row{ID: 1, Values: tt.values}
			if got := r.Size(); got != tt.want {
				t.Errorf("Size() = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestChunkEnd: an INSERT's data blocks end after chunkRows rows or
// chunkBytes bytes, whichever comes first, and hold at least one row.
func TestChunkEnd(t *testing.T) {
	sizes := func(n, each int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = each
		}
		return s
	}
	tests := []struct {
		name      string
		sizes     []int
		start, hi int
		want      int
	}{
		{name: "small rows: chunkRows", sizes: sizes(3000, 300), start: 0, hi: 3000, want: chunkRows},
		{name: "small rows: the run's end", sizes: sizes(3000, 300), start: 2500, hi: 3000, want: 3000},
		{name: "64 KB rows: chunkBytes", sizes: sizes(300, 64<<10), start: 0, hi: 300, want: chunkBytes / (64 << 10)},
		{name: "64 KB rows from the middle", sizes: sizes(300, 64<<10), start: 100, hi: 300, want: 100 + chunkBytes/(64<<10)},
		{name: "a row bigger than a block goes alone", sizes: []int{10, chunkBytes * 2, 10}, start: 1, hi: 3, want: 2},
		{name: "bytes exactly full", sizes: []int{chunkBytes / 2, chunkBytes / 2, 1}, start: 0, hi: 3, want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &block{sizes: tt.sizes, rows: len(tt.sizes)}
			if got := b.chunkEnd(tt.start, tt.hi); got != tt.want {
				t.Errorf("chunkEnd(%d, %d) = %d, want %d", tt.start, tt.hi, got, tt.want)
			}
		})
	}
}
