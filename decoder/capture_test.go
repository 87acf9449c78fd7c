package decoder_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
	"github.com/outbox-cdc/outbox-cdc/replication"
)

// The replay tests in decoder_test.go read real pgoutput messages captured
// from the test PostgreSQL 15 server by TestCapture. Regenerate them with
//
//	eval "$(scripts/testenv.sh env)"
//	CDC_DECODER_CAPTURE=1 go test ./decoder -run TestCapture
//
// and review the diff: the values decoded from the new capture must still
// match the expectations in decoder_test.go (only LSNs, OIDs, xids and commit
// times change between captures; those are checked against capture.json).

const (
	captureEnv = "CDC_DECODER_CAPTURE"
	captureDir = "testdata/pgoutput"
	// captureMeta holds what the replay needs to check the server-assigned
	// values of a capture.
	captureMeta = "capture.json"
)

// captureInfo is the content of testdata/pgoutput/capture.json.
type captureInfo struct {
	ServerVersion string `json:"server_version"`
	// TableOID is the relation id of public.event_outbox; MoodOID the type
	// oid of the enum public.mood (a type pgoutput announces with a Type
	// message because it is not built in).
	TableOID uint32 `json:"table_oid"`
	MoodOID  uint32 `json:"mood_oid"`
	// StartLSN and EndLSN bracket every LSN of the captured stream.
	StartLSN string `json:"start_lsn"`
	EndLSN   string `json:"end_lsn"`
	// Txns are the two captured transactions in stream order.
	Txns []captureTxn `json:"txns"`
	// Files lists the message files in stream order with the WALStart of the
	// XLogData that carried each one.
	Files []captureFile `json:"files"`
}

type captureTxn struct {
	Xid uint32 `json:"xid"`
	// The server's clock just before COMMIT and just after it: the commit
	// timestamp lies between them.
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
}

type captureFile struct {
	Name     string `json:"name"`
	WALStart string `json:"wal_start"`
}

// captureSchema creates a table with a column of every type the decoder
// handles, plus types it does not know (inet, interval, an enum).
const captureSchema = `
CREATE TYPE public.mood AS ENUM ('sad', 'happy');
CREATE TABLE public.event_outbox (
	id              bigint PRIMARY KEY,
	c_int4          integer,
	c_int2          smallint,
	c_varchar       varchar(255),
	c_text          text,
	c_bpchar        char(5),
	c_timestamp     timestamp,
	c_timestamptz   timestamptz,
	c_date          date,
	c_jsonb         jsonb,
	c_json          json,
	c_numeric       numeric,
	c_numeric_20_6  numeric(20,6),
	c_float8        double precision,
	c_float4        real,
	c_bool          boolean,
	c_bytea         bytea,
	c_uuid          uuid,
	c_inet          inet,
	c_interval      interval,
	c_mood          public.mood
);
CREATE PUBLICATION capture_pub FOR TABLE public.event_outbox WITH (publish = 'insert');
`

const captureColumns = `id, c_int4, c_int2, c_varchar, c_text, c_bpchar, c_timestamp, c_timestamptz, c_date,
	c_jsonb, c_json, c_numeric, c_numeric_20_6, c_float8, c_float4, c_bool, c_bytea, c_uuid, c_inet, c_interval, c_mood`

// captureRows are the VALUES lists of the first transaction, by id. The
// session inserting them runs with a non-UTC TimeZone and a non-ISO DateStyle
// on purpose: the replication session's settings, not the writer's, decide
// the text pgoutput sends.
var captureRows = []string{
	// 1: typical values.
	`1, 2147483647, -32768, 'order.created', 'hello world', 'ab',
	 '2024-02-29 23:59:59.123456', '2024-02-29 23:59:59.654321+05:30', '2024-02-29',
	 '{"b": {"nested": [1, 2.50, {"x": null, "ü": "日本"}]}, "a": "ünïcødé ✓", "big": 12345678901234567890.5, "neg": -1e-7}',
	 '{ "z" : 1,"a":[1.10, 12345678901234567890.5] , "dup":1, "dup":2 }',
	 12345678901234567890123456789.123456789, -0.000001, 1e-300, 3.14, true,
	 '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '1 day 02:03:04.5', 'happy'`,
	// 2: every nullable column NULL.
	`2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL`,
	// 3: empty strings, zeros, negative zero.
	`3, 0, 0, '', '', '',
	 '2000-01-01 00:00:00', '1970-01-01 00:00:00+00', '2000-01-01',
	 '{}', '""', 0, 0, '-0', 0, false,
	 '', '00000000-0000-0000-0000-000000000000', '::1', '0', 'sad'`,
	// 4: Unicode and escapes.
	`4, NULL, NULL, 'événement.créé 🎉', E'Ünïcödé 日本語 🎉 "quoted" \\ back\\slash\nnew line\ttab', 'é',
	 NULL, NULL, NULL,
	 '{"emoji": "🎉", "esc": "a\"b\\c\n", "u": "\u00e9"}',
	 '{"emoji": "🎉", "esc": "a\"b\\c\n", "u": "\u00e9"}',
	 NULL, NULL, NULL, NULL, NULL, '\xe282ac', NULL, NULL, NULL, NULL`,
	// 9223372036854775807: extremes.
	`9223372036854775807, -2147483648, 32767, 'x', 'y', 'abcde',
	 '0044-03-15 12:00:00 BC', '9999-12-31 23:59:59.999999+00', '0001-01-01',
	 '[12345678901234567890.5, -0.000000000000000000001, 1E+30]', '[1E+30]',
	 -98765432109876543210.0000000001, 99999999999999.999999, 1.7976931348623157e308, -3.4028235e38, true,
	 '\x', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '2001:db8::/32', '-178000000 years', 'happy'`,
	// 6: values the decoder cannot type (they stay text).
	`6, NULL, NULL, NULL, NULL, NULL,
	 'infinity', '-infinity', 'infinity',
	 'null', 'null', 'NaN', NULL, 'NaN', 'Infinity', NULL,
	 NULL, NULL, NULL, NULL, NULL`,
}

// captureRowsTxn2 is inserted after ALTER TABLE adds a column, so the server
// announces the relation again.
const captureRowTxn2 = `100, NULL, NULL, NULL, 'after alter', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'added'`

// Logical decoding messages: one transactional inside the first transaction
// (after row 3), one non-transactional between the transactions.
const (
	captureHeartbeat  = "2024-02-29T23:59:59.123456Z"
	captureNonTxnPref = "cdc.nontx"
)

var captureNonTxnContent = []byte{0x00, 0x01, 0x02, 0xff, 'z'}

// TestCapture regenerates testdata/pgoutput from the test PostgreSQL server.
// It runs only with CDC_DECODER_CAPTURE=1: it is a generator, not a test.
func TestCapture(t *testing.T) {
	if os.Getenv(captureEnv) != "1" {
		t.Skipf("generator: set %s=1 (and the testenv variables) to recapture %s", captureEnv, captureDir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	url := testenv.NewPostgresDB(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", strings.TrimSpace(sql), err)
		}
	}
	exec(captureSchema)
	// The writer's own session settings must not matter.
	exec(`SET TimeZone = 'America/New_York'`)
	exec(`SET DateStyle = 'SQL, DMY'`)
	exec(`SET IntervalStyle = 'iso_8601'`)
	exec(`SET extra_float_digits = 0`)

	var info captureInfo
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version'), 'public.event_outbox'::regclass::oid, 'public.mood'::regtype::oid`).
		Scan(&info.ServerVersion, &info.TableOID, &info.MoodOID); err != nil {
		t.Fatal(err)
	}

	repl, err := replication.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close(context.Background())
	const slot = "capture_slot"
	if _, err := pglogrepl.CreateReplicationSlot(ctx, repl, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"}); err != nil {
		t.Fatal(err)
	}

	lsnNow := func() pglogrepl.LSN {
		t.Helper()
		var s string
		if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		lsn, err := pglogrepl.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return lsn
	}
	start := lsnNow()
	info.StartLSN = start.String()

	// runTxn runs stmts in one transaction and records its xid and the
	// server clock around COMMIT.
	runTxn := func(stmts ...string) {
		t.Helper()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var txn captureTxn
		var xid int64
		if err := tx.QueryRow(ctx, `SELECT txid_current() % 4294967296`).Scan(&xid); err != nil {
			t.Fatal(err)
		}
		txn.Xid = uint32(xid)
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
		if err := tx.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&txn.NotBefore); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&txn.NotAfter); err != nil {
			t.Fatal(err)
		}
		txn.NotBefore, txn.NotAfter = txn.NotBefore.UTC(), txn.NotAfter.UTC()
		info.Txns = append(info.Txns, txn)
	}

	var txn1 []string
	for i, r := range captureRows {
		txn1 = append(txn1, `INSERT INTO public.event_outbox (`+captureColumns+`) VALUES (`+r+`)`)
		if i == 2 {
			txn1 = append(txn1, fmt.Sprintf(`SELECT pg_logical_emit_message(true, 'cdc', '%s')`, captureHeartbeat))
		}
	}
	runTxn(txn1...)
	exec(`SELECT pg_logical_emit_message(false, $1::text, $2::bytea)`, captureNonTxnPref, captureNonTxnContent)
	exec(`ALTER TABLE public.event_outbox ADD COLUMN c_added text DEFAULT 'default'`)
	runTxn(`INSERT INTO public.event_outbox (` + captureColumns + `, c_added) VALUES (` + captureRowTxn2 + `)`)
	info.EndLSN = lsnNow().String()

	stream, err := replication.Start(ctx, repl, replication.StartOptions{Slot: slot, Publication: "capture_pub"})
	if err != nil {
		t.Fatal(err)
	}

	if err := os.RemoveAll(captureDir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(captureDir, 0o755); err != nil {
		t.Fatal(err)
	}
	commits := 0
	for commits < len(info.Txns) {
		msg, ok, err := stream.Receive(ctx, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !ok || msg.Keepalive {
			continue
		}
		name := fmt.Sprintf("%03d-%s.hex", len(info.Files), pglogrepl.MessageType(msg.Data[0]))
		if err := os.WriteFile(filepath.Join(captureDir, name), []byte(hex.EncodeToString(msg.Data)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		info.Files = append(info.Files, captureFile{Name: name, WALStart: msg.WALStart.String()})
		t.Logf("%s at %s: %d bytes", name, msg.WALStart, len(msg.Data))
		if msg.Data[0] == byte(pglogrepl.MessageTypeCommit) {
			commits++
		}
	}
	js, err := json.MarshalIndent(info, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(captureDir, captureMeta), append(js, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}
