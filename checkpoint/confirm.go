package checkpoint

import "github.com/jackc/pglogrepl"

// Confirmer decides which LSN the stream may confirm to the slot (the flush
// position of a status update, which becomes its confirmed_flush_lsn). It
// is the one place of that rule (DESIGN.md §3.1, §3.6, §8):
//
//  1. A durable position is always confirmable: the end LSN (the Commit's
//     TransactionEndLSN, not its CommitLSN) of a transaction whose rows are
//     all in ClickHouse and marked. The pipeline reports them (Advance), in
//     order; a transaction larger than a batch is durable with its last
//     batch.
//  2. A keepalive's position (the walsender's sent position: every
//     transaction that committed before it was sent) is confirmable only
//     when it was seen while no transaction was open, and every transaction
//     handed to the pipeline is durable. "Open" is from its Begin until the
//     pipeline took its Commit: its rows may not all be handed on. Then no
//     committed row before the position is unflushed, and confirming it
//     keeps the slot moving while the outbox is idle but the database busy.
//  3. The answer never moves backwards. A keepalive's position confirmed
//     before a transaction began stays safe: that transaction commits after
//     it, so the slot still sends it.
//
// Advance and Durable are safe for concurrent use (the pipeline's
// goroutines advance); Begin, Commit, Keepalive and Confirmable belong to
// the one goroutine that reads the stream.
type Confirmer struct {
	durable Tracker

	open     bool
	handedOn pglogrepl.LSN // end of the last transaction the pipeline took
	idle     pglogrepl.LSN // keepalive position seen while nothing was open
	answered pglogrepl.LSN // the highest answer of Confirmable
}

// NewConfirmer starts at the slot's confirmed position: durable, and the
// lowest answer.
func NewConfirmer(start pglogrepl.LSN) *Confirmer {
	c := &Confirmer{handedOn: start, answered: start}
	c.durable.Advance(start)
	return c
}

// Advance records that every transaction ending at or before lsn is
// delivered and marked (rule 1). It is pipeline.Positions.
func (c *Confirmer) Advance(lsn pglogrepl.LSN) { c.durable.Advance(lsn) }

// Durable is the durable LSN.
func (c *Confirmer) Durable() pglogrepl.LSN { return c.durable.Durable() }

// Begin records that a transaction began: it is open until Commit.
func (c *Confirmer) Begin() { c.open = true }

// Commit records that the pipeline took the Commit of the open transaction,
// which ends at end (its TransactionEndLSN): every row of it is handed on.
func (c *Confirmer) Commit(end pglogrepl.LSN) {
	c.open = false
	c.handedOn = max(c.handedOn, end)
}

// Keepalive records the walsender's position from a keepalive. One seen
// while a transaction is open does not count (rule 2): the rows before it
// are not all handed on.
func (c *Confirmer) Keepalive(serverWALEnd pglogrepl.LSN) {
	if !c.open {
		c.idle = max(c.idle, serverWALEnd)
	}
}

// Confirmable is the LSN that may be confirmed now: the durable one, or the
// keepalive's when rule 2 allows it, and never less than an earlier answer.
func (c *Confirmer) Confirmable() pglogrepl.LSN {
	lsn := c.durable.Durable()
	if !c.open && lsn >= c.handedOn && c.idle > lsn {
		lsn = c.idle
	}
	c.answered = max(c.answered, lsn)
	return c.answered
}
