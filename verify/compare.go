package verify

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/outbox-cdc/outbox-cdc/backfill"
	"github.com/outbox-cdc/outbox-cdc/decoder"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// pgState is what the outbox says of an id.
type pgState int8

const (
	absent    pgState = iota // no row with this id
	inFlight                 // pending or failed: not (yet) in ClickHouse, or on its way
	processed                // delivered: must be in ClickHouse
)

// verdict is what one id contributes to a report.
type verdict struct{ missing, duplicated, notInOutbox bool }

// classify judges one id from the outbox's state of it, its fingerprint
// (needed only when the stored copies carry two different fingerprints;
// 0 when unknown) and the fingerprints of its stored copies. See the
// package comment for the rules.
func classify(pg pgState, pgFP uint64, copies []uint64) verdict {
	if len(copies) == 0 {
		return verdict{missing: pg == processed}
	}
	var ids []uint64 // distinct non-zero fingerprints
	zeros := 0
	for _, fp := range copies {
		switch {
		case fp == 0:
			zeros++
		case !slices.Contains(ids, fp):
			ids = append(ids, fp)
		}
	}
	if len(ids) <= 1 {
		return verdict{duplicated: len(copies) > 1, notInOutbox: pg == absent}
	}
	// Two identities under one id: the id was reused.
	var v verdict
	own := zeros // copies that are the outbox row: its fingerprint, or none
	for _, id := range ids {
		n := count(copies, id)
		if pg != absent && id == pgFP {
			own += n
			continue
		}
		v.notInOutbox = true // a row of an earlier life of this id
		if n > 1 {
			v.duplicated = true
		}
	}
	if own > 1 {
		v.duplicated = true
	}
	if own == 0 && pg == processed {
		v.missing = true
	}
	return v
}

func count(fps []uint64, fp uint64) int {
	n := 0
	for _, f := range fps {
		if f == fp {
			n++
		}
	}
	return n
}

// pgRow is an outbox id and whether it is processed.
type pgRow struct {
	id        int64
	processed bool
}

// chRow is a stored copy.
type chRow struct {
	id int64
	fp uint64
}

// compareExactly compares the ids of spans on both sides: PostgreSQL
// first, then ClickHouse (see the package comment for why that order).
func (v *verifier) compareExactly(ctx context.Context, spans []span) error {
	pg, err := v.pgIDs(ctx, spans)
	if err != nil {
		return err
	}
	ch, err := v.chIDs(ctx, spans)
	if err != nil {
		return err
	}
	// Ids stored under several identities need the outbox row's.
	var reused []int64
	for i := 0; i < len(ch); {
		j := i + 1
		for j < len(ch) && ch[j].id == ch[i].id {
			j++
		}
		if j-i > 1 && distinctNonZero(ch[i:j]) > 1 {
			reused = append(reused, ch[i].id)
		}
		i = j
	}
	fps, err := v.fingerprints(ctx, reused)
	if err != nil {
		return err
	}

	var missing, orphans []int64
	copies := make([]uint64, 0, 4)
	i, j := 0, 0
	for i < len(pg) || j < len(ch) {
		var id int64
		switch {
		case j >= len(ch) || (i < len(pg) && pg[i].id < ch[j].id):
			id = pg[i].id
		default:
			id = ch[j].id
		}
		state := absent
		if i < len(pg) && pg[i].id == id {
			state = inFlight
			if pg[i].processed {
				state = processed
			}
			i++
		}
		copies = copies[:0]
		for j < len(ch) && ch[j].id == id {
			copies = append(copies, ch[j].fp)
			j++
		}
		fp, ok := fps[id]
		if !ok && state != absent && len(copies) > 1 && slices.Contains(reused, id) {
			state = absent // deleted since the first read
		}
		verdict := classify(state, fp, copies)
		if verdict.missing {
			missing = append(missing, id)
			v.report.Missing.add(id, v.opts.Samples)
		}
		if verdict.duplicated {
			v.report.Duplicated.add(id, v.opts.Samples)
		}
		switch {
		case verdict.notInOutbox && state == absent:
			orphans = append(orphans, id) // unless the outbox has it now
		case verdict.notInOutbox:
			v.report.NotInOutbox.add(id, v.opts.Samples) // an earlier row under a reused id
		}
	}
	if err := v.addOrphans(ctx, orphans); err != nil {
		return err
	}
	if len(missing) > 0 && v.opts.Missing != nil {
		return v.opts.Missing(ctx, missing)
	}
	return nil
}

func distinctNonZero(rows []chRow) int {
	var seen []uint64
	for _, r := range rows {
		if r.fp != 0 && !slices.Contains(seen, r.fp) {
			seen = append(seen, r.fp)
		}
	}
	return len(seen)
}

// pgIDs reads the outbox ids of spans, in order, with whether each is
// processed.
func (v *verifier) pgIDs(ctx context.Context, spans []span) ([]pgRow, error) {
	los, his := make([]int64, len(spans)), make([]int64, len(spans))
	for i, s := range spans {
		los[i], his[i] = s.lo, s.hi
	}
	rows, err := v.pool.Query(ctx, `SELECT o.id, coalesce(o.status = 'processed', false)
	  FROM unnest($1::int8[], $2::int8[]) AS r(lo, hi) JOIN `+v.pgTbl+` o ON o.id >= r.lo AND o.id <= r.hi ORDER BY o.id`, los, his)
	if err != nil {
		return nil, errf("read ids of "+v.opts.Table, err)
	}
	defer rows.Close()
	var out []pgRow
	for rows.Next() {
		var r pgRow
		if err := rows.Scan(&r.id, &r.processed); err != nil {
			return nil, errf("read ids of "+v.opts.Table, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, errf("read ids of "+v.opts.Table, err)
	}
	return out, nil
}

// chIDs reads the stored copies of spans' ids, in id order.
func (v *verifier) chIDs(ctx context.Context, spans []span) ([]chRow, error) {
	var where strings.Builder
	for i, s := range spans {
		if i > 0 {
			where.WriteString(" OR ")
		}
		fmt.Fprintf(&where, "(id >= %d AND id <= %d)", s.lo, s.hi)
	}
	q := fmt.Sprintf("SELECT id, %s FROM %s WHERE id >= %d AND id <= %d AND (%s) ORDER BY id",
		sink.ColumnFingerprint, v.chTbl, spans[0].lo, spans[len(spans)-1].hi, where.String())
	rows, err := v.ch.Query(ctx, q)
	if err != nil {
		return nil, errf("read ids of "+v.chTbl, err)
	}
	defer rows.Close()
	var out []chRow
	for rows.Next() {
		var r chRow
		if err := rows.Scan(&r.id, &r.fp); err != nil {
			return nil, errf("read ids of "+v.chTbl, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, errf("read ids of "+v.chTbl, err)
	}
	return out, nil
}

// fingerprints hashes the identity of the outbox rows ids, read and decoded
// as the backfill reads them, so that they hash as the sink hashed them.
func (v *verifier) fingerprints(ctx context.Context, ids []int64) (map[int64]uint64, error) {
	out := make(map[int64]uint64, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	_, err := backfill.Rows(ctx, v.pool, v.opts.Table, ids, 1000,
		func(*decoder.Relation, int64, []any) sink.Position { return sink.Position{} },
		func(r sink.Row) error {
			out[r.ID] = sink.Fingerprint(r.Relation, r.Values)
			return nil
		})
	if err != nil {
		return nil, errf("read the rows of reused ids", err)
	}
	return out, nil
}

// addOrphans counts the ids ClickHouse holds that the outbox did not show,
// once it has looked again: the outbox may have committed them, and the
// stream delivered them, between the two reads.
func (v *verifier) addOrphans(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	rows, err := v.pool.Query(ctx, `SELECT id FROM `+v.pgTbl+` WHERE id = ANY($1)`, ids)
	if err != nil {
		return errf("look up ids of "+v.opts.Table, err)
	}
	defer rows.Close()
	there := make(map[int64]bool)
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return errf("look up ids of "+v.opts.Table, err)
		}
		there[id] = true
	}
	if err := rows.Err(); err != nil {
		return errf("look up ids of "+v.opts.Table, err)
	}
	for _, id := range ids {
		if !there[id] {
			v.report.NotInOutbox.add(id, v.opts.Samples)
		}
	}
	return nil
}

func sortSpans(s []span) {
	slices.SortFunc(s, func(a, b span) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
}
