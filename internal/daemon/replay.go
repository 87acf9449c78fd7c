package daemon

import (
	"context"
	"log/slog"
	"math"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-cdc/outbox-cdc/backfill"
	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/pipeline"
	"github.com/outbox-cdc/outbox-cdc/sink"
	"github.com/outbox-cdc/outbox-cdc/verify"
)

// Range is an inclusive range of outbox ids.
type Range struct{ FromID, ToID int64 }

// All is every id.
var All = Range{FromID: math.MinInt64, ToID: math.MaxInt64}

// Verify compares the outbox's processed rows of r with ClickHouse
// (package verify). progress may be nil.
func Verify(ctx context.Context, cfg *config.Config, pool *pgxpool.Pool, log *slog.Logger, r Range, progress func(verify.Progress)) (*verify.Report, error) {
	return runVerify(ctx, cfg, pool, log, r, progress, nil)
}

func runVerify(ctx context.Context, cfg *config.Config, pool *pgxpool.Pool, log *slog.Logger, r Range,
	progress func(verify.Progress), missing func(context.Context, []int64) error) (*verify.Report, error) {
	ch, err := sink.Dial(sinkOptions(cfg, log, false, nil))
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	return verify.Run(ctx, pool, ch, verify.Options{
		Table: cfg.Postgres.Table, Database: cfg.ClickHouse.Database, ClickHouseTable: cfg.ClickHouse.Table,
		FromID: r.FromID, ToID: r.ToID, Progress: progress, Missing: missing, Logger: log,
	})
}

// ReplayResult counts what a replay did.
type ReplayResult struct {
	// Found is the number of processed rows of the range that verify found
	// missing in ClickHouse.
	Found int64
	// Inserted were stored by this replay; AlreadyPresent were found
	// stored by the sink's own look-up (put back by someone else, or by a
	// replay killed after its insert) and not sent again.
	Inserted, AlreadyPresent int64
	// Rejected are rows ClickHouse refused now; they keep their status
	// (see Replay) and are logged.
	Rejected int64
	// Report is verify's report of the range, before the replay.
	Report *verify.Report
}

// Replay re-delivers the processed outbox rows of r that ClickHouse lost
// (a dropped partition, a restored backup, a truncated table). verify finds
// them, bucket by bucket, and each group found is read from the outbox as
// the backfill reads it and sent through the pipeline and sink retry-failed
// uses, under the same retry:<table> lease: one re-drive of an outbox at a
// time, fenced, and every row looked up by id and fingerprint in
// ClickHouse before it is inserted, so it is safe while `cdc run` streams
// and a replay killed midway and run again inserts nothing twice (it simply
// finds fewer rows missing).
//
// Replayed rows are stored at position (0, id): below every floor the
// stream's Recover reads its high-water mark from (the slot's confirmed
// LSN), so they never make the stream believe it is further than it is.
// Their status stays processed; a row ClickHouse now rejects is counted
// and logged, not marked failed (it was delivered once, and the outbox
// still says so). With dryRun nothing is written: only Found is counted.
func Replay(ctx context.Context, cfg *config.Config, pool *pgxpool.Pool, log *slog.Logger, r Range, dryRun bool, progress func(verify.Progress)) (ReplayResult, error) {
	var res ReplayResult
	if dryRun {
		rep, err := Verify(ctx, cfg, pool, log, r, progress)
		if err != nil {
			return res, err
		}
		res.Report, res.Found = rep, rep.Missing.Count
		return res, nil
	}
	h, err := holdRedrive(ctx, cfg, log, nil)
	if err != nil {
		return res, err
	}
	defer h.release()
	ctx = h.ctx

	s, err := sink.Open(ctx, sinkOptions(cfg, log, true, h.fence))
	if err != nil {
		return res, err
	}
	defer s.Close()
	// Inserts of a re-drive that lost its lease may still be running.
	if err := s.Recover(ctx, 0); err != nil {
		return res, err
	}
	w := &countingWriter{Writer: s}
	mk := &replayMarker{log: log.With("slot", cfg.Postgres.Slot, "table", cfg.Postgres.Table)}
	dl := startDelivery(ctx, cfg, w, mk, nil, nil, log, false)
	send := func(r sink.Row) error {
		// Only rows the outbox still calls processed: verify found them
		// so, and nothing else is replay's to deliver.
		if si := r.Relation.ColumnIndex("status"); si >= 0 && r.Values[si] != "processed" {
			return nil
		}
		return dl.hand(ctx, nil, &r)
	}
	rep, err := runVerify(ctx, cfg, pool, log, r, progress, func(ctx context.Context, ids []int64) error {
		res.Found += int64(len(ids))
		_, err := backfill.Rows(ctx, pool, cfg.Postgres.Table, ids, cfg.Batch.Size, ReplayPosition, send)
		return err
	})
	err = dl.finish(err)
	res.Report = rep
	res.Inserted, res.AlreadyPresent, res.Rejected = w.inserted, w.skipped, w.rejected
	if err != nil {
		return res, leaseLost(ctx, err)
	}
	return res, nil
}

// ReplayPosition is the stream position a replayed row is stored at.
func ReplayPosition(_ *decoder.Relation, id int64, _ []any) sink.Position {
	return sink.Position{LSN: 0, Seq: uint64(id)}
}

// countingWriter counts what the sink did with each batch.
type countingWriter struct {
	pipeline.Writer
	inserted, skipped, rejected int64
}

func (c *countingWriter) Write(ctx context.Context, rows []sink.Row) (sink.Result, error) {
	res, err := c.Writer.Write(ctx, rows)
	if err == nil {
		c.inserted += int64(res.Inserted)
		c.skipped += int64(res.Skipped)
		c.rejected += int64(len(res.Rejected))
	}
	return res, err
}

// replayMarker leaves the outbox as it is: replayed rows are processed
// already, and one ClickHouse rejects now is logged instead of marked
// failed.
type replayMarker struct{ log *slog.Logger }

func (m *replayMarker) MarkProcessed(context.Context, []int64, []uint32) error { return nil }

func (m *replayMarker) MarkFailed(_ context.Context, f []checkpoint.Failure, _ []uint32) error {
	for _, r := range f {
		m.log.Error("replay: ClickHouse rejects a processed row; it keeps its status", "id", r.ID, "err", r.Error)
	}
	return nil
}
