// Package replication owns the logical replication connection: it creates
// the slot, starts pgoutput streaming, hands WAL messages to the caller,
// answers keepalives and confirms LSNs.
//
// Only the flush position of a status update advances the slot's
// confirmed_flush_lsn; this package always sets write, flush and apply to the
// same durable LSN the caller passes, and sends status at least every
// interval so the server never times the connection out, even while the
// caller is stuck retrying ClickHouse.
package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Connect opens a replication connection to the database in url. The session
// settings make pgoutput's text values unambiguous: ISO dates in UTC, full
// float precision.
func Connect(ctx context.Context, url string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse postgres.url: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	SetSessionParams(cfg.RuntimeParams)
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres %s:%d: replication connect: %w", cfg.Host, cfg.Port, err)
	}
	return conn, nil
}

// SetSessionParams sets the session settings every cdc connection starts
// with (a connection's RuntimeParams): values rendered as text are then the
// same whichever way they are read, the stream's pgoutput or the backfill's
// query (§8: ISO dates in UTC, intervals in PostgreSQL's style, full float
// precision), and the server names cdc's sessions unless the URL does.
func SetSessionParams(params map[string]string) {
	params["DateStyle"] = "ISO"
	params["TimeZone"] = "UTC"
	params["IntervalStyle"] = "postgres"
	params["extra_float_digits"] = "3"
	if params["application_name"] == "" {
		params["application_name"] = "outbox-cdc"
	}
}

// CreatedSlot is the result of CreateSlot.
type CreatedSlot struct {
	ConsistentPoint pglogrepl.LSN
	// Snapshot names the snapshot exported at the consistent point. It is
	// valid only until the next command on the creating connection.
	Snapshot string
}

// CreateSlot creates a pgoutput slot and exports its snapshot.
func CreateSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (CreatedSlot, error) {
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		return CreatedSlot{}, fmt.Errorf("postgres: create replication slot %q: %w", slot, err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return CreatedSlot{}, fmt.Errorf("postgres: create replication slot %q: consistent point %q: %w", slot, res.ConsistentPoint, err)
	}
	return CreatedSlot{ConsistentPoint: lsn, Snapshot: res.SnapshotName}, nil
}

// ErrSlotInUse is returned by Start when another process streams from the
// slot (SQLSTATE 55006): the caller should wait as a standby.
var ErrSlotInUse = errors.New("replication slot is in use by another process")

// Message is one message from the stream: WAL data or a keepalive.
type Message struct {
	Keepalive bool
	// WALStart is the LSN of the data (XLogData only).
	WALStart pglogrepl.LSN
	// ServerWALEnd is the server's position when it sent the message. For a
	// keepalive it is the walsender's sent position: every transaction that
	// committed before it has already been sent.
	ServerWALEnd pglogrepl.LSN
	// Data is a pgoutput message. It points into the connection's read
	// buffer and is valid only until the next Receive: decode it (or copy
	// it) before receiving again.
	Data []byte
}

// Stream is a started pgoutput stream. It is not safe for concurrent use:
// one goroutine receives and sends status.
type Stream struct {
	conn           *pgconn.PgConn
	slot           string
	statusInterval time.Duration
	log            *slog.Logger

	lastStatus time.Time
	lastSent   pglogrepl.LSN
	replyNow   bool
	deadline   time.Time // read deadline set on the connection
	bulk       bulkMode
	serverEnd  pglogrepl.LSN
}

// StartOptions configure Start.
type StartOptions struct {
	Slot        string
	Publication string
	// StatusInterval is the longest gap between status updates (10s).
	StatusInterval time.Duration
	Logger         *slog.Logger
}

// Start begins streaming from the slot's confirmed position with pgoutput
// protocol 1 (the server spills big transactions and sends them at commit)
// and logical decoding messages enabled for heartbeats.
func Start(ctx context.Context, conn *pgconn.PgConn, opts StartOptions) (*Stream, error) {
	args := []string{
		"proto_version '1'",
		fmt.Sprintf("publication_names '%s'", opts.Publication),
		"messages 'true'",
	}
	// The server's flushed end of WAL, read on the same connection just
	// before the stream starts (a standby reports its replay position).
	// The first message cannot tell it: that is a keepalive carrying the
	// slot's start position.
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("postgres: identify system before streaming slot %q: %w", opts.Slot, err)
	}
	err = pglogrepl.StartReplication(ctx, conn, opts.Slot, 0, pglogrepl.StartReplicationOptions{Mode: pglogrepl.LogicalReplication, PluginArgs: args})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			return nil, fmt.Errorf("%w: %s", ErrSlotInUse, pgErr.Message)
		}
		return nil, fmt.Errorf("postgres: start replication on slot %q: %w", opts.Slot, err)
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	now := time.Now()
	return &Stream{conn: conn, slot: opts.Slot, statusInterval: opts.StatusInterval, log: opts.Logger, lastStatus: now,
		bulk: bulkMode{conn: conn.Conn(), winStart: now}, serverEnd: sys.XLogPos}, nil
}

// ServerEnd is the server's end of WAL when the stream began: every
// transaction that committed before it was already written, a backlog the
// stream catches up on, however slowly the walsender sends it.
func (s *Stream) ServerEnd() pglogrepl.LSN { return s.serverEnd }

// Receive waits up to about timeout (at least half of it) for the next
// message. ok is false when the time passed without one. Keepalives that ask
// for a reply make the next UpdateStatus send at once. ctx is checked before
// each wait, not during it: the wait is bounded by timeout instead.
func (s *Stream) Receive(ctx context.Context, timeout time.Duration) (msg Message, ok bool, err error) {
	if err := ctx.Err(); err != nil {
		return Message{}, false, fmt.Errorf("postgres: receive from slot %q: %w", s.slot, err)
	}
	// A context per call costs pgconn a watcher goroutine and a timer per
	// message (about half of the daemon's CPU at full speed). A read deadline
	// on the connection, moved only when less than half of it is left, bounds
	// the wait just as well.
	now := time.Now()
	wait := s.bulk.wait(timeout)
	if left := s.deadline.Sub(now); left < wait/2 || left > wait {
		s.deadline = now.Add(wait)
		if err := s.conn.Conn().SetReadDeadline(s.deadline); err != nil {
			return Message{}, false, fmt.Errorf("postgres: receive from slot %q: set deadline: %w", s.slot, err)
		}
	}
	raw, err := s.conn.ReceiveMessage(context.Background())
	if err != nil {
		if pgconn.Timeout(err) {
			if err := s.bulk.timedOut(time.Now()); err != nil {
				return Message{}, false, fmt.Errorf("postgres: receive from slot %q: leave bulk mode: %w", s.slot, err)
			}
			return Message{}, false, nil
		}
		return Message{}, false, fmt.Errorf("postgres: receive from slot %q: %w", s.slot, err)
	}
	if cd, isData := raw.(*pgproto3.CopyData); isData {
		if err := s.bulk.received(now, len(cd.Data)); err != nil {
			return Message{}, false, fmt.Errorf("postgres: receive from slot %q: enter bulk mode: %w", s.slot, err)
		}
	}
	switch m := raw.(type) {
	case *pgproto3.CopyData:
		if len(m.Data) == 0 {
			return Message{}, false, fmt.Errorf("postgres: slot %q: empty CopyData", s.slot)
		}
		switch m.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
			if err != nil {
				return Message{}, false, fmt.Errorf("postgres: slot %q: parse keepalive: %w", s.slot, err)
			}
			if ka.ReplyRequested {
				s.replyNow = true
			}
			return Message{Keepalive: true, ServerWALEnd: ka.ServerWALEnd}, true, nil
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(m.Data[1:])
			if err != nil {
				return Message{}, false, fmt.Errorf("postgres: slot %q: parse XLogData: %w", s.slot, err)
			}
			return Message{WALStart: xld.WALStart, ServerWALEnd: xld.ServerWALEnd, Data: xld.WALData}, true, nil
		default:
			return Message{}, false, fmt.Errorf("postgres: slot %q: unexpected CopyData type %q", s.slot, m.Data[0])
		}
	case *pgproto3.ErrorResponse:
		return Message{}, false, fmt.Errorf("postgres: slot %q: %w", s.slot, pgconn.ErrorResponseToPgError(m))
	case *pgproto3.CopyDone:
		return Message{}, false, fmt.Errorf("postgres: slot %q: server ended the stream", s.slot)
	default:
		return Message{}, false, fmt.Errorf("postgres: slot %q: unexpected message %T", s.slot, raw)
	}
}

// UpdateStatus confirms durable (the LSN below which everything is
// delivered) when the server asked for a reply, when the interval passed, or
// when durable moved (at most every 200ms). It never sends a position the
// caller did not give it.
func (s *Stream) UpdateStatus(ctx context.Context, durable pglogrepl.LSN) error {
	since := time.Since(s.lastStatus)
	if !s.replyNow && since < s.statusInterval && (durable == s.lastSent || since < 200*time.Millisecond) {
		return nil
	}
	return s.SendStatus(ctx, durable)
}

// SendStatus sends a status update now.
func (s *Stream) SendStatus(ctx context.Context, durable pglogrepl.LSN) error {
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: durable,
		WALFlushPosition: durable,
		WALApplyPosition: durable,
		ClientTime:       time.Now(),
	})
	if err != nil {
		return fmt.Errorf("postgres: slot %q: send status %s: %w", s.slot, durable, err)
	}
	if durable != s.lastSent {
		s.log.Debug("confirmed", "slot", s.slot, "lsn", durable.String())
	}
	s.lastStatus, s.lastSent, s.replyNow = time.Now(), durable, false
	return nil
}

// Confirmed is the last LSN sent in a status update.
func (s *Stream) Confirmed() pglogrepl.LSN { return s.lastSent }
