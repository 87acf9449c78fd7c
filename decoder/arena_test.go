package decoder

import "testing"

// TestArenaSpan: the arena lets its chunks go once arenaSpan bytes of rows
// were decoded into them, so a row kept alive pins at most that much of
// other rows' memory; below it, rows keep sharing chunks (no allocation
// per row).
func TestArenaSpan(t *testing.T) {
	tests := []struct {
		name    string
		rowSize int
		rows    int
		// chunks is how many distinct string-header chunks the rows' values
		// land in.
		chunks int
	}{
		{name: "small rows share one chunk", rowSize: 300, rows: 100, chunks: 1},
		{name: "64 KB rows: a new chunk every 16 rows", rowSize: 64 << 10, rows: 48, chunks: 48 / (arenaSpan / (64 << 10))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a arena
			text := make([]byte, tt.rowSize)
			seen := map[*string]bool{}
			for range tt.rows {
				a.string(text)
				seen[&a.strs[:1][0]] = true
				a.account(tt.rowSize)
			}
			if len(seen) != tt.chunks {
				t.Errorf("values landed in %d chunks, want %d", len(seen), tt.chunks)
			}
		})
	}
}
