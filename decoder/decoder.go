// Package decoder turns pgoutput (protocol version 1, text mode) messages into
// typed events: Relation, Begin, Insert, Commit and logical decoding Messages.
//
// Column values are decoded from their text form with pgtype into a small set
// of Go types (see Value), so the sink can convert them to whatever column
// types the ClickHouse table has. jsonb and json stay as their raw text:
// decoding them would turn numbers into float64 and reorder keys.
package decoder

import (
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
}

type relationPlan struct {
	rel   *Relation
	codec []*columnCodec
}

// New returns a Decoder with an empty relation cache.
func New() *Decoder {
	return &Decoder{relations: make(map[uint32]*relationPlan), values: NewValueDecoder()}
}

// Decode decodes one pgoutput message (the WALData of an XLogData). It returns
// a nil Event for messages the pipeline does not need (Type, Origin, Update,
// Delete, Truncate). data is not retained: the returned event owns its memory.
// Malformed input yields an error, never a panic.
func (d *Decoder) Decode(data []byte) (Event, error) {
	if len(data) == 0 {
		return nil, errors.New("pgoutput: empty message")
	}
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeInsert:
		return d.decodeInsert(data[1:])
	case pglogrepl.MessageTypeBegin, pglogrepl.MessageTypeCommit, pglogrepl.MessageTypeRelation, pglogrepl.MessageTypeMessage:
		msg, err := parse(data)
		if err != nil {
			return nil, err
		}
		return d.fromParsed(msg)
	case pglogrepl.MessageTypeType, pglogrepl.MessageTypeOrigin, pglogrepl.MessageTypeUpdate,
		pglogrepl.MessageTypeDelete, pglogrepl.MessageTypeTruncate:
		return nil, nil
	default:
		return nil, fmt.Errorf("pgoutput: unknown message type %q", data[0])
	}
}

// parse runs pglogrepl's parser, which indexes its input without bounds
// checks; a truncated message must surface as an error so the stream can be
// restarted, not crash the daemon.
func parse(data []byte) (msg pglogrepl.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, fmt.Errorf("pgoutput: malformed %s message (%d bytes)", pglogrepl.MessageType(data[0]), len(data))
		}
	}()
	msg, err = pglogrepl.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("pgoutput: parse %s message: %w", pglogrepl.MessageType(data[0]), err)
	}
	return msg, nil
}

func (d *Decoder) fromParsed(msg pglogrepl.Message) (Event, error) {
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		return &Begin{FinalLSN: m.FinalLSN, CommitTime: m.CommitTime, Xid: m.Xid}, nil
	case *pglogrepl.CommitMessage:
		return &Commit{CommitLSN: m.CommitLSN, EndLSN: m.TransactionEndLSN, CommitTime: m.CommitTime}, nil
	case *pglogrepl.RelationMessage:
		if int(m.ColumnNum) != len(m.Columns) {
			return nil, fmt.Errorf("pgoutput: relation %d announces %d columns, carries %d", m.RelationID, m.ColumnNum, len(m.Columns))
		}
		rel := &Relation{ID: m.RelationID, Namespace: m.Namespace, Name: m.RelationName, Columns: make([]Column, len(m.Columns))}
		plan := &relationPlan{rel: rel, codec: make([]*columnCodec, len(m.Columns))}
		for i, c := range m.Columns {
			rel.Columns[i] = Column{Name: c.Name, TypeOID: c.DataType, TypeMod: c.TypeModifier, Key: c.Flags&1 != 0}
			plan.codec[i] = d.values.codecFor(c.DataType)
		}
		d.relations[m.RelationID] = plan
		return rel, nil
	case *pglogrepl.LogicalDecodingMessage:
		content := make([]byte, len(m.Content))
		copy(content, m.Content)
		return &Message{LSN: m.LSN, Transactional: m.Transactional, Prefix: m.Prefix, Content: content}, nil
	}
	return nil, nil
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
	values := make([]any, n)
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
			v, err := plan.codec[i].decode(src[pos : pos+l])
			if err != nil {
				return nil, fmt.Errorf("pgoutput: insert into %s column %q: %w", plan.rel.QualifiedName(), plan.rel.Columns[i].Name, err)
			}
			values[i] = v
			pos += l
		default:
			return nil, fmt.Errorf("pgoutput: insert into %s column %d has unknown kind %q", plan.rel.QualifiedName(), i, kind)
		}
	}
	if pos != len(src) {
		return nil, fmt.Errorf("pgoutput: insert into %s has %d trailing bytes", plan.rel.QualifiedName(), len(src)-pos)
	}
	return &Insert{Relation: plan.rel, Values: values}, nil
}
