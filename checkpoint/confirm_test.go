package checkpoint_test

import (
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-cdc/outbox-cdc/checkpoint"
)

// Every case of the confirmation rule (checkpoint.Confirmer's comment,
// DESIGN.md §3.1, §3.6, §8). No servers.
func TestConfirmer(t *testing.T) {
	type step struct {
		do  string // begin, commit, keepalive, durable, or ask (lsn is the answer wanted)
		lsn pglogrepl.LSN
	}
	const start = pglogrepl.LSN(0x100)
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"starts at the slot's position", []step{{"ask", start}}},
		{"a durable transaction end is confirmable", []step{
			{"begin", 0}, {"commit", 0x200}, {"durable", 0x200}, {"ask", 0x200}}},
		{"not past the durable LSN while a handed-on transaction is not durable", []step{
			{"begin", 0}, {"commit", 0x200}, {"keepalive", 0x500}, {"durable", 0x150}, {"ask", 0x150},
			{"durable", 0x1ff}, {"ask", 0x1ff}}},
		{"the keepalive's position once everything handed on is durable", []step{
			{"begin", 0}, {"commit", 0x200}, {"keepalive", 0x500}, {"durable", 0x200}, {"ask", 0x500}}},
		{"an idle stream: the keepalive's position", []step{{"keepalive", 0x500}, {"ask", 0x500}}},
		{"a keepalive seen inside a transaction does not count", []step{
			{"begin", 0}, {"keepalive", 0x900}, {"commit", 0x300}, {"durable", 0x300}, {"ask", 0x300}}},
		{"a commit the pipeline has not taken keeps the transaction open", []step{
			{"begin", 0}, {"keepalive", 0x900}, {"durable", 0x300}, {"ask", 0x300}}},
		{"while a transaction is open, only the durable LSN", []step{
			{"keepalive", 0x500}, {"begin", 0}, {"ask", start}}},
		{"never backwards: an answered keepalive position stays", []step{
			{"keepalive", 0x500}, {"ask", 0x500}, {"begin", 0}, {"ask", 0x500},
			{"commit", 0x600}, {"ask", 0x500}, {"durable", 0x600}, {"ask", 0x600}}},
		{"a keepalive behind the durable LSN", []step{
			{"begin", 0}, {"commit", 0x200}, {"durable", 0x200}, {"keepalive", 0x180}, {"ask", 0x200}}},
		{"durable never goes back", []step{{"durable", 0x300}, {"durable", 0x200}, {"ask", 0x300}}},
		{"a keepalive position needs the later transaction durable too", []step{
			{"keepalive", 0x500}, {"begin", 0}, {"commit", 0x700}, {"keepalive", 0x800}, {"durable", 0x600}, {"ask", 0x600},
			{"durable", 0x700}, {"ask", 0x800}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := checkpoint.NewConfirmer(start)
			for i, s := range tc.steps {
				switch s.do {
				case "begin":
					c.Begin()
				case "commit":
					c.Commit(s.lsn)
				case "keepalive":
					c.Keepalive(s.lsn)
				case "durable":
					c.Advance(s.lsn)
				case "ask":
					if got := c.Confirmable(); got != s.lsn {
						t.Fatalf("step %d: Confirmable() = %s, want %s (steps %v)", i, got, s.lsn, tc.steps)
					}
				default:
					t.Fatalf("unknown step %q", s.do)
				}
			}
		})
	}
}
