package daemon

import (
	"slices"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
	"github.com/outbox-cdc/outbox-cdc/replication"
)

// keepaliveMsg is a primary keepalive at the walsender's position end.
func keepaliveMsg(end pglogrepl.LSN) replication.Message {
	return replication.Message{Keepalive: true, ServerWALEnd: end}
}

// Which LSN the stream may confirm (DESIGN §3.1, §3.6, §8), as the source
// tells its confirmer (checkpoint.TestConfirmer pins the rule itself): a
// transaction's TransactionEndLSN, never its CommitLSN, and the keepalive's
// position only when every transaction handed on is durable and none is
// open or waiting to be handed on. No servers: hand-built pgoutput messages.
func TestSourceConfirmsOnlyWhatIsDurable(t *testing.T) {
	const (
		commitLSN  = pglogrepl.LSN(0x1000)
		commitEnd  = pglogrepl.LSN(0x1030)
		idle       = pglogrepl.LSN(0x5000)
		laterBegin = pglogrepl.LSN(0x6000)
	)
	type check struct {
		durable, want pglogrepl.LSN
		why           string
	}
	for _, tc := range []struct {
		name string
		// after is fed after the first transaction and an idle keepalive
		// at 0/5000; take says whether the pipeline takes the commits it
		// hands on (rows are always taken).
		after  []replication.Message
		take   bool
		checks []check
	}{
		{
			name: "idle after the transaction",
			take: true,
			checks: []check{
				{0x800, 0x800, "a row of the transaction is still buffered: the durable LSN, not the keepalive's"},
				{commitEnd - 1, commitEnd - 1, "the transaction is not durable up to its end yet"},
				{commitEnd, idle, "everything handed on is durable and nothing is open: the keepalive's position"},
			},
		},
		{
			name:  "inside the next transaction",
			after: []replication.Message{beginMsg(laterBegin), insertMsg(16384, 2, 20), keepaliveMsg(0x9000)},
			take:  true,
			checks: []check{
				{commitEnd, commitEnd, "a transaction is open: its rows may not all be handed on"},
			},
		},
		{
			name:  "the next transaction's row not yet taken",
			after: []replication.Message{beginMsg(laterBegin), insertMsg(16384, 2, 20), commitMsg(laterBegin, laterBegin+0x30), keepaliveMsg(0x9000)},
			take:  false,
			checks: []check{
				{commitEnd, commitEnd, "the pipeline has not taken the commit: it is not durable"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSource("public.event_outbox", metrics.New(), nil, checkpoint.NewConfirmer(0))
			taken, commits, err := handleAll(s, relationMsg(16384, "public", "event_outbox", "id", "x"),
				beginMsg(commitLSN), insertMsg(16384, 1, 10), commitMsg(commitLSN, commitEnd))
			if err != nil || taken != 2 {
				t.Fatalf("first transaction: %d items, %v", taken, err)
			}
			if !slices.Equal(commits, []pglogrepl.LSN{commitEnd}) {
				t.Fatalf("commit handed on as %v, want its end %s: confirming the commit LSN %s sends the transaction again",
					commits, commitEnd, commitLSN)
			}
			s.confirm.Keepalive(idle)
			for _, m := range tc.after {
				if m.Keepalive {
					s.confirm.Keepalive(m.ServerWALEnd)
					continue
				}
				if err := s.handle(m); err != nil {
					t.Fatal(err)
				}
				if s.hasPending && (tc.take || s.pending.Row != nil) {
					s.handedOn()
				}
			}
			for _, c := range tc.checks {
				s.confirm.Advance(c.durable)
				if got := s.confirm.Confirmable(); got != c.want {
					t.Errorf("Confirmable() with %s durable = %s, want %s: %s", c.durable, got, c.want, c.why)
				}
			}
		})
	}
}
