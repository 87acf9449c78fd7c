package decoder_test

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/outbox-cdc/outbox-cdc/decoder"
)

// Micro-benchmarks of the hot path: one pgoutput Insert of a typical outbox
// row (the benchmark's ~300-byte row) into typed values. Run with
//
//	go test -run '^$' -bench . -benchmem ./decoder
//
// allocs/op is the number to watch: it is per row.

type benchCol struct {
	name string
	oid  uint32
	val  string // "" with null = true is NULL
	null bool
}

var outboxRow = []benchCol{
	{"id", pgtype.Int8OID, "123456", false},
	{"event_type", pgtype.VarcharOID, "order.created", false},
	{"event_date_time", pgtype.TimestampOID, "2026-11-27 23:41:07.123456", false},
	{"environment", pgtype.VarcharOID, "production", false},
	{"event_context", pgtype.JSONBOID, `{"sku": "SKU-012345", "note": "benchmark payload of a realistic size", "amount": 123.45, "user_id": 12345, "currency": "EUR", "order_id": 123456}`, false},
	{"metadata_version", pgtype.Int8OID, "2", false},
	{"status", pgtype.VarcharOID, "pending", false},
	{"created_at", pgtype.TimestampOID, "2026-11-28 00:41:07.654321", false},
	{"updated_at", pgtype.TimestampOID, "2026-11-28 00:41:07.654321", false},
	{"last_error", pgtype.TextOID, "", true},
	{"attempts", pgtype.Int4OID, "0", false},
}

func relationMessage(relID uint32, cols []benchCol) []byte {
	b := []byte{'R'}
	b = binary.BigEndian.AppendUint32(b, relID)
	b = append(b, "public\x00event_outbox\x00"...)
	b = append(b, 'd')
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for i, c := range cols {
		flags := byte(0)
		if i == 0 {
			flags = 1
		}
		b = append(b, flags)
		b = append(b, c.name...)
		b = append(b, 0)
		b = binary.BigEndian.AppendUint32(b, c.oid)
		b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	}
	return b
}

func insertMessage(relID uint32, cols []benchCol) []byte {
	b := []byte{'I'}
	b = binary.BigEndian.AppendUint32(b, relID)
	b = append(b, 'N')
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		if c.null {
			b = append(b, 'n')
			continue
		}
		b = append(b, 't')
		b = binary.BigEndian.AppendUint32(b, uint32(len(c.val)))
		b = append(b, c.val...)
	}
	return b
}

// benchMessages are n Insert messages of distinct rows as a producer writes
// them: every row its own id, payload and event time; four event types;
// created_at and updated_at shared by the rows of one 1000-row transaction.
func benchMessages(n int) [][]byte {
	msgs := make([][]byte, n)
	types := []string{"order.created", "order.paid", "user.signed_up", "cart.updated"}
	for i := range msgs {
		row := append([]benchCol(nil), outboxRow...)
		id := 1_000_000 + i
		row[0].val = fmt.Sprint(id)
		row[1].val = types[i%len(types)]
		row[2].val = fmt.Sprintf("2026-11-27 23:%02d:%02d.%06d", i/60%60, i%60, i*7919%1000000)
		row[4].val = fmt.Sprintf(`{"sku": "SKU-%06d", "note": "benchmark payload of a realistic size", "amount": %d.%02d, "user_id": %d, "currency": "EUR", "order_id": %d}`, i*13%99991, i%1000, i%100, i*7919%1000003, id)
		txn := fmt.Sprintf("2026-11-28 00:41:%02d.%06d", i/1000%60, i/1000*104729%1000000)
		row[7].val, row[8].val = txn, txn
		msgs[i] = insertMessage(1, row)
	}
	return msgs
}

func BenchmarkDecodeInsert(b *testing.B) {
	d := decoder.New()
	if _, err := d.Decode(relationMessage(1, outboxRow)); err != nil {
		b.Fatal(err)
	}
	msgs := benchMessages(4000)
	var size int
	for _, m := range msgs {
		size += len(m)
	}
	b.SetBytes(int64(size / len(msgs)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		ev, err := d.Decode(msgs[i%len(msgs)])
		if err != nil {
			b.Fatal(err)
		}
		if ins := ev.(*decoder.Insert); len(ins.Values) != len(outboxRow) {
			b.Fatal("wrong row")
		}
		i++
	}
}

// BenchmarkDecodeBeginCommit is the per-transaction overhead.
func BenchmarkDecodeBeginCommit(b *testing.B) {
	d := decoder.New()
	begin := make([]byte, 21)
	begin[0] = 'B'
	commit := make([]byte, 26)
	commit[0] = 'C'
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Decode(begin); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Decode(commit); err != nil {
			b.Fatal(err)
		}
	}
}
