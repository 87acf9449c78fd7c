package pipeline_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/pipeline"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// BenchmarkPipeline measures the pipeline's own cost per row: items fed
// through the input channel as the stream does (1000-row transactions),
// batched, and handed to a writer and marker that do nothing. Run with
//
//	go test -run '^$' -bench . -benchmem ./pipeline
type nopDest struct{}

func (nopDest) Write(_ context.Context, rows []sink.Row) (sink.Result, error) {
	return sink.Result{Inserted: len(rows)}, nil
}
func (nopDest) MarkProcessed(context.Context, []int64, []uint32) error { return nil }
func (nopDest) MarkFailed(context.Context, []checkpoint.Failure, []uint32) error {
	return nil
}

func BenchmarkPipeline(b *testing.B) {
	for _, tc := range []struct {
		size   int
		budget bool
	}{{1000, false}, {10000, false}, {1000, true}} {
		size := tc.size
		name := fmt.Sprintf("batch=%d", size)
		if tc.budget {
			name += "/budget"
		}
		b.Run(name, func(b *testing.B) {
			const rows = 100_000
			tracker := checkpoint.NewTracker(0)
			// With budget, the producer measures each row and acquires its
			// bytes first, as the stream's source does.
			var budget *pipeline.Budget
			if tc.budget {
				budget = pipeline.DefaultBudget(16 << 20)
			}
			p := pipeline.New(pipeline.Options{Size: size, FlushInterval: time.Hour, Retry: tinyRetry, Budget: budget},
				nopDest{}, nopDest{}, tracker, nil, slog.New(slog.DiscardHandler))
			// The rows exist before the clock starts, as the stream's do
			// (the source hands them out of chunks): allocs/row is the
			// pipeline's own.
			src := make([]sink.Row, rows)
			values := make([]any, 11)
			for i := range src {
				src[i] = sink.Row{ID: int64(i + 1), Values: values}
			}
			var before, after runtime.MemStats
			b.ReportAllocs()
			runtime.ReadMemStats(&before)
			for b.Loop() {
				in := make(chan pipeline.Item, size)
				done := make(chan error, 1)
				go func() { done <- p.Run(context.Background(), in) }()
				for i := 1; i <= rows; i++ {
					it := pipeline.Item{Row: &src[i-1], Size: 300}
					if tc.budget {
						it.Size = it.Row.Size()
						for !budget.TryAcquire(it.Size) {
							<-budget.Freed()
						}
					}
					in <- it
					if i%1000 == 0 {
						in <- pipeline.Item{CommitEnd: pglogrepl.LSN(i)}
					}
				}
				close(in)
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			}
			runtime.ReadMemStats(&after)
			n := float64(b.N) * rows
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/row")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/row")
		})
	}
}
