package sink

import (
	"context"
	"errors"
	"testing"
)

// A sink whose fence says the lease is lost sends nothing more (DESIGN
// §3.10): not the INSERT, and not the next data block of one under way.
func TestFenceStopsEveryInsert(t *testing.T) {
	errLost := errors.New("lease lost")
	n := int64(3*chunkRows + 1) // four data blocks
	for _, tc := range []struct {
		name string
		// allowed is how many fence checks pass before the lease is lost.
		allowed   int
		minChecks int
		// maxStored: the blocks sent while the lease held may be stored
		// (a client that goes away ends an INSERT on ClickHouse 18).
		maxStored uint64
	}{
		{"lost before the insert", 0, 1, 0},
		{"lost between data blocks", 2, 3, 2 * chunkRows},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openTestSink(t)
			checks := 0
			s.opts.Fence = func() error {
				if checks++; checks > tc.allowed {
					return errLost
				}
				return nil
			}
			res, err := s.Write(context.Background(), rowsAt(100, seqIDs(1, n)...))
			if !errors.Is(err, errLost) {
				t.Fatalf("write with a lost lease: %+v, %v; want the fence's error", res, err)
			}
			if checks < tc.minChecks {
				t.Errorf("fence asked %d times, want at least %d (before the INSERT and before each further block)", checks, tc.minChecks)
			}
			if c, _ := count(t, s); c > tc.maxStored {
				t.Errorf("%d rows stored, want at most the %d sent while the lease held", c, tc.maxStored)
			}
		})
	}
}
