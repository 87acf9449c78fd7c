// Package decoder turns pgoutput (protocol version 1, text mode) messages into
// typed events: Relation, Begin, Insert, Commit and logical decoding Messages.
//
// Column values are decoded from their text form with pgtype into a small set
// of Go types (see Value), so the sink can convert them to whatever column
// types the ClickHouse table has. jsonb and json stay as their raw text:
// decoding them would turn numbers into float64 and reorder keys.
package decoder

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// Relation describes a published table as announced by a Relation message.
// The decoder replaces it whenever the server sends a new one (after DDL).
type Relation struct {
	ID        uint32
	Namespace string
	Name      string
	Columns   []Column
}

// Column is one column of a Relation.
type Column struct {
	Name    string
	TypeOID uint32
	TypeMod int32
	Key     bool
}

// ColumnIndex returns the position of the named column, or -1.
func (r *Relation) ColumnIndex(name string) int {
	for i, c := range r.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// QualifiedName is "namespace.name".
func (r *Relation) QualifiedName() string { return r.Namespace + "." + r.Name }

// Begin starts a transaction. FinalLSN is the LSN of its commit record, known
// up front, so rows can be versioned before the Commit arrives.
type Begin struct {
	FinalLSN   pglogrepl.LSN
	CommitTime time.Time
	Xid        uint32
}

// Insert is one inserted row. Values is aligned with Relation.Columns; a nil
// element is SQL NULL.
type Insert struct {
	Relation *Relation
	Values   []any
}

// Commit ends a transaction. EndLSN (TransactionEndLSN) is the position to
// confirm once every row of the transaction is durable downstream: confirming
// CommitLSN instead would make the server send the transaction again.
type Commit struct {
	CommitLSN  pglogrepl.LSN
	EndLSN     pglogrepl.LSN
	CommitTime time.Time
}

// Message is a logical decoding message (pg_logical_emit_message).
type Message struct {
	LSN           pglogrepl.LSN
	Transactional bool
	Prefix        string
	Content       []byte
}

// Event is one of *Relation, *Begin, *Insert, *Commit or *Message.
type Event any

// ErrUnknownRelation is returned for a row whose Relation was never announced
// on this stream: the stream is out of sync and must be restarted.
var ErrUnknownRelation = errors.New("pgoutput: row for unknown relation")

// Decoder decodes one replication stream. It keeps the relation cache, so use
// one Decoder per connection. It is not safe for concurrent use.
type Decoder struct {
	relations map[uint32]*relationPlan
	values    *ValueDecoder
	// arena holds the rows' memory: an Insert, its values and their text
	// come from shared chunks, a few allocations per hundred rows.
	arena arena
}

type relationPlan struct {
	rel   *Relation
	codec []*columnCodec
	// last is, per column, the text of the previous row's value and what it
	// decoded to: outbox rows repeat many values (event types, statuses, the
	// created_at of one transaction), and a repeated value is shared instead
	// of decoded and stored again. Only immutable kinds are shared.
	last []lastValue
}

type lastValue struct {
	text []byte
	val  any
}

// maxShared is the longest value text worth comparing with the previous.
const maxShared = 64

// New returns a Decoder with an empty relation cache.
func New() *Decoder {
	return &Decoder{relations: make(map[uint32]*relationPlan), values: NewValueDecoder()}
}

// Decode decodes one pgoutput message (the WALData of an XLogData). It returns
// a nil Event for messages the pipeline does not need (Type, Origin, Update,
// Delete, Truncate). data is not retained: the returned event owns its memory.
// Malformed input yields an error, never a panic: every message the pipeline
// uses (and Type, which precedes a Relation) must be exactly as long as its
// fields say, so a stream that is not what we think it is stops at once.
func (d *Decoder) Decode(data []byte) (Event, error) {
	if len(data) == 0 {
		return nil, errors.New("pgoutput: empty message")
	}
	typ := pglogrepl.MessageType(data[0])
	if typ == pglogrepl.MessageTypeInsert {
		// Not "return d.decodeInsert(...)": a nil *Insert in the Event
		// interface would be a non-nil event next to the error.
		ins, err := d.decodeInsert(data[1:])
		if err != nil {
			return nil, err
		}
		return ins, nil
	}
	r := &reader{typ: typ, src: data[1:]}
	var ev Event
	switch typ {
	case pglogrepl.MessageTypeBegin:
		ev = d.decodeBegin(r)
	case pglogrepl.MessageTypeCommit:
		ev = d.decodeCommit(r)
	case pglogrepl.MessageTypeRelation:
		ev = d.decodeRelation(r)
	case pglogrepl.MessageTypeMessage:
		ev = d.decodeMessage(r)
	case pglogrepl.MessageTypeType:
		// Announces a non-built-in column type before the Relation using it;
		// the Relation carries the type OID, which is all we need.
		r.uint32("type OID")
		r.cstring("namespace")
		r.cstring("name")
	case pglogrepl.MessageTypeOrigin, pglogrepl.MessageTypeUpdate,
		pglogrepl.MessageTypeDelete, pglogrepl.MessageTypeTruncate:
		return nil, nil
	default:
		return nil, fmt.Errorf("pgoutput: unknown message type %q", data[0])
	}
	if err := r.finish(); err != nil {
		return nil, err
	}
	return ev, nil
}

// reader reads the fields of one message, bounds-checked. After the first
// short read every further read returns zero values; finish reports it, or
// bytes left over.
type reader struct {
	typ pglogrepl.MessageType
	src []byte
	pos int
	err error
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.src)-r.pos {
		r.err = fmt.Errorf("pgoutput: %s message truncated at %s (%d bytes)", r.typ, what, len(r.src)+1)
		return nil
	}
	b := r.src[r.pos : r.pos+n]
	r.pos += n
	return b
}

func (r *reader) uint8(what string) uint8 {
	if b := r.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) uint16(what string) uint16 {
	if b := r.take(2, what); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) uint32(what string) uint32 {
	if b := r.take(4, what); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) uint64(what string) uint64 {
	if b := r.take(8, what); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *reader) lsn(what string) pglogrepl.LSN { return pglogrepl.LSN(r.uint64(what)) }

// time reads a timestamp (microseconds since 2000-01-01 UTC) as UTC.
func (r *reader) time(what string) time.Time {
	us := int64(r.uint64(what))
	const pgEpoch = 946684800 // 2000-01-01 in Unix seconds
	return time.Unix(pgEpoch+us/1e6, (us%1e6)*1e3).UTC()
}

// cstring reads a NUL-terminated string.
func (r *reader) cstring(what string) string {
	if r.err != nil {
		return ""
	}
	end := bytes.IndexByte(r.src[r.pos:], 0)
	if end < 0 {
		r.err = fmt.Errorf("pgoutput: %s message: %s is not NUL-terminated", r.typ, what)
		return ""
	}
	s := string(r.src[r.pos : r.pos+end])
	r.pos += end + 1
	return s
}

func (r *reader) remaining() int { return len(r.src) - r.pos }

func (r *reader) finish() error {
	if r.err != nil {
		return r.err
	}
	if r.pos != len(r.src) {
		return fmt.Errorf("pgoutput: %s message has %d trailing bytes", r.typ, len(r.src)-r.pos)
	}
	return nil
}

// decodeBegin: final LSN (8), commit time (8), xid (4).
func (d *Decoder) decodeBegin(r *reader) *Begin {
	b := &Begin{}
	b.FinalLSN = r.lsn("final LSN")
	b.CommitTime = r.time("commit time")
	b.Xid = r.uint32("xid")
	return b
}

// decodeCommit: flags (1, unused), commit LSN (8), end LSN (8), commit time (8).
func (d *Decoder) decodeCommit(r *reader) *Commit {
	c := &Commit{}
	r.uint8("flags")
	c.CommitLSN = r.lsn("commit LSN")
	c.EndLSN = r.lsn("end LSN")
	c.CommitTime = r.time("commit time")
	return c
}

// decodeMessage: flags (1, bit 0 = transactional), LSN (8), prefix (string),
// content length (4), content.
func (d *Decoder) decodeMessage(r *reader) *Message {
	m := &Message{}
	m.Transactional = r.uint8("flags")&1 != 0
	m.LSN = r.lsn("LSN")
	m.Prefix = r.cstring("prefix")
	n := r.uint32("content length")
	if c := r.take(int(n), "content"); c != nil {
		m.Content = append([]byte{}, c...)
	}
	return m
}

// decodeRelation: relation id (4), namespace, name, replica identity (1),
// column count (2), then per column flags (1), name, type OID (4), type
// modifier (4). The relation replaces any earlier one with the same id only
// when it decodes completely.
func (d *Decoder) decodeRelation(r *reader) *Relation {
	rel := &Relation{}
	rel.ID = r.uint32("relation id")
	rel.Namespace = r.cstring("namespace")
	rel.Name = r.cstring("name")
	r.uint8("replica identity")
	n := int(r.uint16("column count"))
	// A column takes at least 10 bytes: do not trust the count further than
	// the message could hold.
	const minColumn = 1 + 1 + 4 + 4
	if r.err == nil && n > r.remaining()/minColumn {
		r.err = fmt.Errorf("pgoutput: relation %d announces %d columns in %d bytes", rel.ID, n, r.remaining())
	}
	if r.err != nil {
		return nil
	}
	rel.Columns = make([]Column, n)
	for i := range rel.Columns {
		c := &rel.Columns[i]
		c.Key = r.uint8("column flags")&1 != 0
		c.Name = r.cstring("column name")
		c.TypeOID = r.uint32("column type")
		c.TypeMod = int32(r.uint32("column type modifier"))
	}
	if r.finish() != nil {
		return nil
	}
	plan := &relationPlan{rel: rel, codec: make([]*columnCodec, n), last: make([]lastValue, n)}
	for i, c := range rel.Columns {
		plan.codec[i] = d.values.codecFor(c.TypeOID)
	}
	d.relations[rel.ID] = plan
	return rel
}

// decodeInsert parses an Insert message body itself (rather than through
// pglogrepl.Parse) because it is the hot path and must bounds-check every
// length: relation id (4), 'N', column count (2), then per column a kind byte
// and, for 't'/'b', a 4-byte length and the bytes.
func (d *Decoder) decodeInsert(src []byte) (*Insert, error) {
	if len(src) < 7 {
		return nil, fmt.Errorf("pgoutput: insert message too short (%d bytes)", len(src))
	}
	relID := binary.BigEndian.Uint32(src)
	if src[4] != 'N' {
		return nil, fmt.Errorf("pgoutput: insert tuple type %q, want 'N'", src[4])
	}
	plan, ok := d.relations[relID]
	if !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownRelation, relID)
	}
	n := int(binary.BigEndian.Uint16(src[5:]))
	if n != len(plan.rel.Columns) {
		return nil, fmt.Errorf("pgoutput: insert into %s has %d columns, relation has %d", plan.rel.QualifiedName(), n, len(plan.rel.Columns))
	}
	values := d.arena.values(n)
	pos := 7
	for i := 0; i < n; i++ {
		if pos >= len(src) {
			return nil, fmt.Errorf("pgoutput: insert into %s truncated at column %d", plan.rel.QualifiedName(), i)
		}
		kind := src[pos]
		pos++
		switch kind {
		case pglogrepl.TupleDataTypeNull:
			values[i] = nil
		case pglogrepl.TupleDataTypeToast:
			// Inserts always carry full values; an unchanged-TOAST marker here
			// means the stream is not what we think it is.
			return nil, fmt.Errorf("pgoutput: insert into %s has unchanged-toast column %q", plan.rel.QualifiedName(), plan.rel.Columns[i].Name)
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			if pos+4 > len(src) {
				return nil, fmt.Errorf("pgoutput: insert into %s truncated at column %d length", plan.rel.QualifiedName(), i)
			}
			l := int(binary.BigEndian.Uint32(src[pos:]))
			pos += 4
			if l < 0 || l > len(src)-pos {
				return nil, fmt.Errorf("pgoutput: insert into %s column %d length %d exceeds message", plan.rel.QualifiedName(), i, l)
			}
			if kind == pglogrepl.TupleDataTypeBinary {
				return nil, fmt.Errorf("pgoutput: binary column %q: the stream must be started in text mode", plan.rel.Columns[i].Name)
			}
			text := src[pos : pos+l]
			pos += l
			last := &plan.last[i]
			if last.val != nil && string(text) == string(last.text) {
				values[i] = last.val
				continue
			}
			c := plan.codec[i]
			v := c.decode(text, &d.arena)
			values[i] = v
			if l <= maxShared && c.shareable() {
				last.text, last.val = append(last.text[:0], text...), v
			} else {
				last.val = nil
			}
		default:
			return nil, fmt.Errorf("pgoutput: insert into %s column %d has unknown kind %q", plan.rel.QualifiedName(), i, kind)
		}
	}
	if pos != len(src) {
		return nil, fmt.Errorf("pgoutput: insert into %s has %d trailing bytes", plan.rel.QualifiedName(), len(src)-pos)
	}
	ins := d.arena.insert()
	ins.Relation, ins.Values = plan.rel, values
	d.arena.account(len(src))
	return ins, nil
}
