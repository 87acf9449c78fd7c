// Package errclass is the one classifier of errors that reach the operator
// (in the manner of PeerDB's alerting classifier): it tells a set-up error
// that no retry can fix (a wrong role or database, missing rights, wal_level,
// a missing object, a ClickHouse table migrate cannot repair) from a
// transient one (the network, a restarting server, anything unknown).
//
// `cdc run` stops on a permanent error met before its first successful
// session (afterwards everything retries: a table dropped under a running
// daemon is an outage to wait out, not a typo), and `cdc migrate` and
// `cdc status` name the same category and fix.
//
// The rule: decide by type and named error code (pgerrcode for SQLSTATEs,
// ch-go's proto.Err* for ClickHouse), never by message, except where one
// SQLSTATE covers both kinds (55000). When in doubt, the error is transient:
// retrying a permanent error costs log lines, stopping on a transient one
// costs an outage.
package errclass

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-cdc/outbox-cdc/replication"
	"github.com/outbox-cdc/outbox-cdc/sink"
)

// Category is what an operator has to do about an error.
type Category int

// Categories. Every one but Transient is permanent: retrying cannot fix it.
const (
	Transient     Category = iota // network, timeouts, restarts, unknown errors: retry
	Auth                          // authentication failed, no such role or user
	Privilege                     // the role lacks a right (REPLICATION, a table's privileges)
	WALLevel                      // wal_level is below logical: no logical slot can exist
	MissingObject                 // a database, table or publication does not exist
	Schema                        // a ClickHouse table lacking cdc's columns or with wrong types
)

func (c Category) String() string {
	switch c {
	case Transient:
		return "transient"
	case Auth:
		return "authentication"
	case Privilege:
		return "insufficient privilege"
	case WALLevel:
		return "wal_level"
	case MissingObject:
		return "missing object"
	case Schema:
		return "schema"
	}
	return fmt.Sprintf("Category(%d)", int(c))
}

// Permanent reports whether retrying cannot fix an error of this category.
func (c Category) Permanent() bool { return c != Transient }

// Problem is the classification of one error.
type Problem struct {
	Category Category
	// Fix is what the operator should do; empty when the error's own text
	// already names it (publication and schema errors carry their fix).
	Fix string
}

// Classify says what err means for the operator.
func Classify(err error) Problem {
	if err == nil {
		return Problem{Category: Transient}
	}
	var pubErr *replication.PublicationError
	if errors.As(err, &pubErr) {
		return Problem{Category: MissingObject} // its text names the fix
	}
	var schemaErr *sink.SchemaError
	if errors.As(err, &schemaErr) {
		if schemaErr.Missing {
			return Problem{Category: MissingObject}
		}
		return Problem{Category: Schema}
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return classifyPostgres(pgErr)
	}
	var chErr *clickhouse.Exception
	if errors.As(err, &chErr) {
		return classifyClickHouse(chErr)
	}
	return Problem{Category: Transient}
}

func classifyPostgres(e *pgconn.PgError) Problem {
	switch e.Code {
	case pgerrcode.InvalidPassword, pgerrcode.InvalidAuthorizationSpecification:
		// 28000 is also "role does not exist" and a pg_hba.conf rejection.
		return Problem{Category: Auth, Fix: "check the role and password in postgres.url (and pg_hba.conf on the server)"}
	case pgerrcode.InvalidCatalogName:
		return Problem{Category: MissingObject, Fix: "check the database name in postgres.url (CREATE DATABASE it, or point postgres.url at the outbox's database)"}
	case pgerrcode.InsufficientPrivilege:
		return Problem{Category: Privilege, Fix: "the role of postgres.url needs the REPLICATION attribute (ALTER ROLE name REPLICATION) " +
			"and SELECT, UPDATE, DELETE on the outbox and cdc's tables (or run as the owner that ran `cdc migrate`)"}
	case pgerrcode.ObjectNotInPrerequisiteState:
		// 55000 also means a lost slot or a standby in recovery (a
		// failover in progress): only the wal_level case is set-up.
		if strings.Contains(e.Message, "wal_level") {
			return Problem{Category: WALLevel, Fix: "set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"}
		}
	case pgerrcode.UndefinedTable:
		return Problem{Category: MissingObject, Fix: "run `cdc migrate` (it creates the outbox, its publication and cdc's tables), or check postgres.table"}
	case pgerrcode.UndefinedObject:
		return Problem{Category: MissingObject, Fix: "run `cdc migrate`, or check postgres.publication"}
	}
	return Problem{Category: Transient}
}

func classifyClickHouse(e *clickhouse.Exception) Problem {
	switch proto.Error(e.Code) {
	case proto.ErrAuthenticationFailed, proto.ErrUnknownUser, proto.ErrWrongPassword, proto.ErrRequiredPassword, proto.ErrIPAddressNotAllowed:
		return Problem{Category: Auth, Fix: "check clickhouse.username and clickhouse.password (and the user's networks on the server)"}
	case proto.ErrAccessDenied, proto.ErrDatabaseAccessDenied:
		return Problem{Category: Privilege, Fix: "grant the ClickHouse user SELECT and INSERT on clickhouse.database.clickhouse.table"}
	case proto.ErrUnknownDatabase:
		return Problem{Category: MissingObject, Fix: "run `cdc migrate` (it creates the database and table), or check clickhouse.database"}
	case proto.ErrUnknownTable:
		return Problem{Category: MissingObject, Fix: "run `cdc migrate` (it creates the table), or check clickhouse.table"}
	}
	return Problem{Category: Transient}
}

// PermanentError is an error Classify found permanent, with its fix. Its
// text is the one message `cdc run` exits with.
type PermanentError struct {
	Problem
	Err error
}

func (e *PermanentError) Error() string {
	msg := fmt.Sprintf("cannot start (%s error; retrying cannot fix it): %s", e.Category, e.Err)
	if e.Fix != "" {
		msg += "; fix: " + e.Fix
	}
	return msg
}

func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent returns err as a *PermanentError when Classify finds it
// permanent, else nil.
func Permanent(err error) *PermanentError {
	p := Classify(err)
	if !p.Category.Permanent() {
		return nil
	}
	return &PermanentError{Problem: p, Err: err}
}
