package daemon

import (
	"encoding/binary"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
	"github.com/outbox-cdc/outbox-cdc/replication"
)

// pgoutput builds protocol-1 messages as the walsender sends them.
type pgoutput struct{ b []byte }

func (p *pgoutput) u8(v byte) *pgoutput      { p.b = append(p.b, v); return p }
func (p *pgoutput) u16(v uint16) *pgoutput   { p.b = binary.BigEndian.AppendUint16(p.b, v); return p }
func (p *pgoutput) u32(v uint32) *pgoutput   { p.b = binary.BigEndian.AppendUint32(p.b, v); return p }
func (p *pgoutput) u64(v uint64) *pgoutput   { p.b = binary.BigEndian.AppendUint64(p.b, v); return p }
func (p *pgoutput) str(s string) *pgoutput   { p.b = append(append(p.b, s...), 0); return p }
func (p *pgoutput) msg() replication.Message { return replication.Message{Data: p.b} }

func beginMsg(final pglogrepl.LSN) replication.Message {
	return (&pgoutput{}).u8('B').u64(uint64(final)).u64(0).u32(1).msg()
}

func commitMsg(commit, end pglogrepl.LSN) replication.Message {
	return (&pgoutput{}).u8('C').u8(0).u64(uint64(commit)).u64(uint64(end)).u64(0).msg()
}

// relationMsg announces a relation whose columns are all bigint.
func relationMsg(oid uint32, schema, name string, cols ...string) replication.Message {
	p := (&pgoutput{}).u8('R').u32(oid).str(schema).str(name).u8('d').u16(uint16(len(cols)))
	for _, c := range cols {
		p.u8(0).str(c).u32(pgtype.Int8OID).u32(0xFFFFFFFF)
	}
	return p.msg()
}

func insertMsg(oid uint32, values ...int64) replication.Message {
	p := (&pgoutput{}).u8('I').u32(oid).u8('N').u16(uint16(len(values)))
	for _, v := range values {
		text := strconv.FormatInt(v, 10)
		p.u8('t').u32(uint32(len(text)))
		p.b = append(p.b, text...)
	}
	return p.msg()
}

// handleAll feeds msgs to the source, taking each item it hands on as the
// pipeline would; it returns the first error and the items taken.
func handleAll(s *source, msgs ...replication.Message) (taken int, commits []pglogrepl.LSN, err error) {
	for _, m := range msgs {
		if err := s.handle(m); err != nil {
			return taken, commits, err
		}
		if s.hasPending {
			if s.pending.Row == nil {
				commits = append(commits, s.pending.CommitEnd)
			}
			s.handedOn()
			taken++
		}
	}
	return taken, commits, nil
}

// An Insert of a relation other than the outbox (a second table in the
// publication, a partition published under its own name, a renamed outbox)
// ends the session with an error naming it; the transaction's Commit is not
// handed on, so the slot is never confirmed past the row. A Relation
// message of another table alone is fine.
func TestSourceRefusesRowsOfAnotherRelation(t *testing.T) {
	for _, tc := range []struct {
		name       string
		oid        uint32
		schema     string
		table      string
		want       []string
		outboxRows int
	}{
		{"another table", 16500, "public", "other", []string{"public.other (OID 16500)", "publication"}, 1},
		{"a partition", 16501, "public", "event_outbox_2026", []string{"public.event_outbox_2026 (OID 16501)", "publish_via_partition_root"}, 1},
		{"renamed outbox", 16384, "public", "event_outbox_v1", []string{"public.event_outbox_v1 (OID 16384)", "renamed"}, 0},
		{"outbox of another schema", 16502, "audit", "event_outbox", []string{"audit.event_outbox (OID 16502)"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSource("public.event_outbox", metrics.New(), nil, checkpoint.NewConfirmer(0))
			msgs := []replication.Message{beginMsg(0x3000)}
			if tc.outboxRows > 0 {
				msgs = append(msgs, relationMsg(16384, "public", "event_outbox", "id", "x"), insertMsg(16384, 1, 10))
			}
			msgs = append(msgs, relationMsg(tc.oid, tc.schema, tc.table, "id", "x"))
			taken, _, err := handleAll(s, msgs...)
			if err != nil || taken != tc.outboxRows {
				t.Fatalf("before the foreign row: %d items, %v", taken, err)
			}
			_, commits, err := handleAll(s, insertMsg(tc.oid, 2, 20), insertMsg(16384, 3, 30), commitMsg(0x3000, 0x3100))
			if err == nil {
				t.Fatal("a row of another relation was accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if len(commits) > 0 {
				t.Errorf("commit handed on (%v): the slot could be confirmed past the row", commits)
			}
			s.confirm.Keepalive(0x9000)
			s.confirm.Advance(0x2000)
			if got := s.confirm.Confirmable(); got != 0x2000 {
				t.Errorf("Confirmable() = %s after the refused row with 0/2000 durable, want 0/2000", got)
			}
		})
	}
}

// The server re-sends Relation messages (after ANALYZE, autovacuum, DDL);
// the source's relation map must not grow with them, and a new Relation
// with the id column moved is followed.
func TestSourceRelationMapsDoNotGrow(t *testing.T) {
	s := newSource("public.event_outbox", metrics.New(), nil, checkpoint.NewConfirmer(0))
	const n = 1000
	for i := range n {
		cols := []string{"id", "x"}
		want := int64(i)
		row := insertMsg(16384, want, -1)
		if i%2 == 1 { // DDL moved the id column
			cols = []string{"x", "id"}
			row = insertMsg(16384, -1, want)
		}
		taken, commits, err := handleAll(s, beginMsg(pglogrepl.LSN(i+1)<<8),
			relationMsg(16384, "public", "event_outbox", cols...), relationMsg(16385, "public", "unrelated", "id"),
			row, commitMsg(pglogrepl.LSN(i+1)<<8, pglogrepl.LSN(i+1)<<8+0x10))
		if err != nil || taken != 2 || len(commits) != 1 {
			t.Fatalf("transaction %d: %d items, %v", i, taken, err)
		}
		if got := s.rows[len(s.rows)-1].ID; got != want {
			t.Fatalf("transaction %d: id %d, want %d (id column not followed after a new Relation)", i, got, want)
		}
	}
	if len(s.idCol) != 1 {
		t.Errorf("source relation map has %d entries after %d re-sent Relation messages, want 1", len(s.idCol), n)
	}
}

// Each row the source hands on carries its transaction's xid (the Begin
// message's): the pipeline's marking waits until that transaction is
// visible, since decoded is not yet visible (TestMarkingSeesRowsOfCommitsNotYetVisible).
func TestSourceRowsCarryTheirTransaction(t *testing.T) {
	s := newSource("public.event_outbox", metrics.New(), nil, checkpoint.NewConfirmer(0))
	begin := func(final pglogrepl.LSN, xid uint32) replication.Message {
		return (&pgoutput{}).u8('B').u64(uint64(final)).u64(0).u32(xid).msg()
	}
	msgs := []replication.Message{
		begin(0x3000, 700), relationMsg(16384, "public", "event_outbox", "id", "x"), insertMsg(16384, 1, 10), insertMsg(16384, 2, 20),
		commitMsg(0x3000, 0x3100),
		begin(0x4000, 4_000_000_001), insertMsg(16384, 3, 30), commitMsg(0x4000, 0x4100),
	}
	// The stream began when the server's WAL ended at 0x3500: the first
	// transaction's rows are caught up on, the second's are not.
	s.catchUpTo = 0x3500
	for i := range msgs {
		msgs[i].WALStart = pglogrepl.LSN(0x3000 + 0x100*i)
	}
	type item struct {
		id      int64
		xid     uint32
		catchUp bool
	}
	var got []item
	for _, m := range msgs {
		if err := s.handle(m); err != nil {
			t.Fatal(err)
		}
		if s.hasPending {
			if s.pending.Row != nil {
				got = append(got, item{s.pending.Row.ID, s.pending.Xid, s.pending.CatchUp})
			} else if s.pending.Xid != 0 {
				t.Errorf("commit item carries xid %d", s.pending.Xid)
			}
			s.handedOn()
		}
	}
	want := []item{{1, 700, true}, {2, 700, true}, {3, 4_000_000_001, false}}
	if !slices.Equal(got, want) {
		t.Errorf("rows (id, xid, catch-up) %v, want %v", got, want)
	}
}
