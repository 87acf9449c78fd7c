package backfill

import "testing"

// TestNextPage: pages are batch.size rows while rows are small and about
// pageBytes when they are big, never fewer than one row.
func TestNextPage(t *testing.T) {
	tests := []struct {
		name           string
		chunk, n, size int
		want           int
	}{
		{name: "first page or empty", chunk: 1000, n: 0, size: 0, want: 1000},
		{name: "small rows", chunk: 1000, n: 1000, size: 300 * 1000, want: 1000},
		{name: "64 KB rows", chunk: 1000, n: 1000, size: 1000 * 64 << 10, want: pageBytes / (64 << 10)},
		{name: "rows bigger than a page", chunk: 1000, n: 2, size: 2 * 3 * pageBytes, want: 1},
		{name: "grows back when rows get small", chunk: 1000, n: 10, size: 10 * 100, want: 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextPage(tt.chunk, tt.n, tt.size); got != tt.want {
				t.Errorf("nextPage(%d, %d, %d) = %d, want %d", tt.chunk, tt.n, tt.size, got, tt.want)
			}
		})
	}
}
