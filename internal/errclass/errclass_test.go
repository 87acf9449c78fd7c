package errclass

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-cdc/outbox-cdc/replication"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

func pg(code, msg string) error {
	return fmt.Errorf("postgres: connect: %w", &pgconn.PgError{Code: code, Message: msg})
}

func ch(code proto.Error) error {
	return fmt.Errorf("clickhouse: read columns: %w", &clickhouse.Exception{Code: int32(code), Message: code.String()})
}

func TestClassify(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want Category
	}{
		{"nil", nil, Transient},
		{"network", errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), Transient},
		{"context", context.DeadlineExceeded, Transient},
		{"wrong password", pg("28P01", "password authentication failed"), Auth},
		{"unknown role", pg("28000", `role "x" does not exist`), Auth},
		{"unknown database", pg("3D000", `database "x" does not exist`), MissingObject},
		{"no REPLICATION", pg("42501", "must be superuser or replication role to start walsender"), Privilege},
		{"wal_level", pg("55000", "logical decoding requires wal_level >= logical"), WALLevel},
		{"55000 in recovery", pg("55000", "logical decoding cannot be used while in recovery"), Transient},
		{"slot in use", pg("55006", `replication slot "x" is active for PID 1`), Transient},
		{"missing table", pg("42P01", `relation "cdc_lease" does not exist`), MissingObject},
		{"missing publication", pg("42704", `publication "x" does not exist`), MissingObject},
		{"server shutting down", pg("57P01", "terminating connection due to administrator command"), Transient},
		{"serialization", pg("40001", "could not serialize access"), Transient},
		{"publication", &replication.PublicationError{Publication: "p", Problem: "does not exist"}, MissingObject},
		{"clickhouse table missing", &sink.SchemaError{Missing: true}, MissingObject},
		{"clickhouse schema", fmt.Errorf("open: %w", &sink.SchemaError{Problem: "lacks _lsn"}), Schema},
		{"clickhouse auth 516", ch(proto.ErrAuthenticationFailed), Auth},
		{"clickhouse unknown user", ch(proto.ErrUnknownUser), Auth},
		{"clickhouse wrong password", ch(proto.ErrWrongPassword), Auth},
		{"clickhouse access denied", ch(proto.ErrAccessDenied), Privilege},
		{"clickhouse unknown database", ch(proto.ErrUnknownDatabase), MissingObject},
		{"clickhouse unknown table", ch(proto.ErrUnknownTable), MissingObject},
		{"clickhouse too many parts", ch(proto.ErrTooManyParts), Transient},
		{"clickhouse memory", ch(proto.ErrMemoryLimitExceeded), Transient},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Classify(c.err)
			if got.Category != c.want {
				t.Fatalf("Classify(%v) = %s, want %s", c.err, got.Category, c.want)
			}
			perr := Permanent(c.err)
			if (perr != nil) != c.want.Permanent() {
				t.Fatalf("Permanent(%v) = %v, want permanent %v", c.err, perr, c.want.Permanent())
			}
			if perr != nil && !errors.Is(perr, c.err) {
				t.Errorf("PermanentError does not wrap the error")
			}
		})
	}
}
