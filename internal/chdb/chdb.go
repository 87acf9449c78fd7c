// Package chdb runs a current ClickHouse engine in-process for tests:
// libchdb.so (the engine behind clickhouse-local, from the npm package
// @chdb/lib-linux-x64-gnu, fetched by scripts/chdb.sh) loaded through
// github.com/chdb-io/chdb-go. There is no server and no TCP port.
//
// The engine is offered as a clickhouse-go driver.Conn, so code written for a
// ClickHouse server runs on it unchanged: migrations.ApplyClickHouse and the
// sink's whole write path (PrepareBatch, Append, Send). Data crosses in the
// Native format, encoded and decoded by clickhouse-go's own column code,
// exactly as clickhouse-go's HTTP transport does (block revision 0):
//
//   - Query, QueryRow: the query runs with FORMAT Native and the result is
//     decoded by clickhouse-go's proto.Block; Scan is the driver's ScanRow.
//   - PrepareBatch: a proto.Block with the target columns' types (DESCRIBE
//     TABLE, like clickhouse-go's HTTP batch); Append is the driver's
//     AppendRow (and Columns hands out the block's columns, for callers that
//     append column by column); Send writes the encoded block to a file and
//     runs INSERT INTO t (cols) SELECT * FROM file(path, Native).
//   - Errors are *clickhouse.Exception with the engine's code and message, so
//     callers that branch on codes (the sink's bisection) behave as with a
//     server.
//
// Only positional `?` arguments are bound (strings, integers, floats,
// booleans). Only one engine can exist per process (a limit of libchdb);
// Shared returns it.
//
// Only tests with the `chdb` build tag import it (`make test-modern`): a
// binary that does needs CDC_TEST_CHDB_LIB (see package libpath), and must
// call CloseShared before it exits.
package chdb

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	chproto "github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"
	chdbpurego "github.com/chdb-io/chdb-go/chdb-purego"

	_ "github.com/outbox-cdc/outbox-cdc/internal/chdb/libpath" // must come first: see its doc
)

// Engine is the embedded ClickHouse engine. It implements driver.Conn;
// methods the tests do not need (Select, AsyncInsert, QueryFormat, …) are
// left to the embedded nil interface and panic if called.
type Engine struct {
	driver.Conn

	mu      sync.Mutex // libchdb runs one query at a time per session
	conn    chdbpurego.ChdbConn
	tmp     string
	version proto.ServerHandshake
}

var (
	sharedOnce sync.Once
	shared     *Engine
	sharedErr  error
)

// Shared returns the process's engine, starting it on first use. libchdb
// keeps one session per process: a test binary calls CloseShared from
// TestMain once its tests are done.
func Shared() (*Engine, error) {
	sharedOnce.Do(func() { shared, sharedErr = open() })
	return shared, sharedErr
}

func open() (*Engine, error) {
	tmp, err := os.MkdirTemp("", "outbox-cdc-chdb-")
	if err != nil {
		return nil, err
	}
	conn, err := chdbpurego.NewConnectionFromConnString(":memory:")
	if err != nil {
		return nil, fmt.Errorf("chdb: start the embedded engine (%s): %w", os.Getenv("CHDB_LIB_PATH"), err)
	}
	e := &Engine{conn: conn, tmp: tmp}
	var (
		display, version, tz string
		revision             uint32
	)
	if err := e.QueryRow(context.Background(), "SELECT displayName(), version(), revision(), timezone()").Scan(&display, &version, &revision, &tz); err != nil {
		return nil, fmt.Errorf("chdb: read engine version: %w", err)
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, fmt.Errorf("chdb: engine time zone %q: %w", tz, err)
	}
	e.version = proto.ServerHandshake{Name: "chdb", DisplayName: display, Revision: uint64(revision),
		Version: proto.ParseVersion(version), Timezone: loc}
	return e, nil
}

// CloseShared stops the process's engine, if it was started. A test binary
// must call it before it exits: the engine's background threads crash the
// exit otherwise (libc's exit, which -race builds use, runs its destructors
// under them).
func CloseShared() {
	if shared != nil {
		shared.mu.Lock()
		defer shared.mu.Unlock()
		shared.conn.Close()
		os.RemoveAll(shared.tmp)
	}
}

// Version is the engine's version() string, e.g. "26.7.2.1".
func (e *Engine) Version() string {
	v := e.version.Version
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
}

// run executes one statement and returns its output in format.
func (e *Engine) run(ctx context.Context, query, format string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	res, err := e.conn.Query(query, format)
	if err != nil {
		return nil, toException(err)
	}
	if res == nil {
		return nil, nil
	}
	defer res.Free()
	if err := res.Error(); err != nil {
		return nil, toException(err)
	}
	return bytes.Clone(res.Buf()), nil // Buf points into memory Free releases
}

var exceptionRE = regexp.MustCompile(`(?s)^Code: (\d+)\. DB::Exception: (.*?)(?: \(([A-Z0-9_]+)\))?(?: \(version [^)]*\))?\.?\s*$`)

// toException turns the engine's "Code: N. DB::Exception: … (NAME)" into the
// *clickhouse.Exception a server would have produced.
func toException(err error) error {
	m := exceptionRE.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Errorf("chdb: %w", err)
	}
	code, _ := strconv.Atoi(m[1])
	return &clickhouse.Exception{Code: int32(code), Name: "DB::Exception", CodeName: m[3], Message: m[2]}
}

// ServerVersion reports the engine's version, like a server's handshake.
func (e *Engine) ServerVersion() (*driver.ServerVersion, error) {
	v := e.version
	return &v, nil
}

// Exec runs a statement.
func (e *Engine) Exec(ctx context.Context, query string, args ...any) error {
	q, err := bind(query, args)
	if err != nil {
		return err
	}
	_, err = e.run(ctx, q, "Null")
	return err
}

// Ping checks that the engine answers.
func (e *Engine) Ping(ctx context.Context) error { return e.Exec(ctx, "SELECT 1") }

// Close does nothing: the engine lives as long as the process.
func (e *Engine) Close() error { return nil }

// Query runs a query and decodes its Native output with clickhouse-go.
func (e *Engine) Query(ctx context.Context, query string, args ...any) (driver.Rows, error) {
	q, err := bind(query, args)
	if err != nil {
		return nil, err
	}
	out, err := e.run(ctx, q, "Native")
	if err != nil {
		return nil, err
	}
	r := &rows{}
	rd := chproto.NewReader(bytes.NewReader(out))
	for {
		sc := column.ServerContext{Revision: e.version.Revision, VersionMajor: e.version.Version.Major,
			VersionMinor: e.version.Version.Minor, VersionPatch: e.version.Version.Patch, Timezone: e.version.Timezone}
		b := &proto.Block{ServerContext: &sc}
		if err := b.Decode(rd, 0); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("chdb: decode Native result of %q: %w", query, err)
		}
		if r.names == nil {
			r.names = b.ColumnsNames()
		}
		if b.Rows() > 0 {
			r.blocks = append(r.blocks, b)
		}
	}
	return r, nil
}

// QueryRow runs a query expected to return at most one row.
func (e *Engine) QueryRow(ctx context.Context, query string, args ...any) driver.Row {
	rs, err := e.Query(ctx, query, args...)
	return &row{rows: rs, err: err}
}

type rows struct {
	names      []string
	blocks     []*proto.Block
	block, row int // current position: blocks[block], row 1-based
}

func (r *rows) Next() bool {
	for r.block < len(r.blocks) {
		if r.row < r.blocks[r.block].Rows() {
			r.row++
			return true
		}
		r.block, r.row = r.block+1, 0
	}
	return false
}

func (r *rows) HasData() bool { return r.block < len(r.blocks) }

func (r *rows) Scan(dest ...any) error {
	if r.block >= len(r.blocks) || r.row == 0 {
		return io.EOF
	}
	b := r.blocks[r.block]
	if len(dest) != len(b.Columns) {
		return fmt.Errorf("chdb: Scan: expected %d destination arguments, not %d", len(b.Columns), len(dest))
	}
	for i, d := range dest {
		if err := b.Columns[i].ScanRow(d, r.row-1); err != nil {
			return fmt.Errorf("chdb: Scan column %s: %w", r.names[i], err)
		}
	}
	return nil
}

func (r *rows) Columns() []string                { return r.names }
func (r *rows) Totals(dest ...any) error         { return sql.ErrNoRows }
func (r *rows) Close() error                     { return nil }
func (r *rows) Err() error                       { return nil }
func (r *rows) ScanStruct(dest any) error        { return errors.New("chdb: ScanStruct is not supported") }
func (r *rows) ColumnTypes() []driver.ColumnType { return nil }

type row struct {
	rows driver.Rows
	err  error
}

func (r *row) Err() error { return r.err }

func (r *row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		return sql.ErrNoRows
	}
	return r.rows.Scan(dest...)
}

func (r *row) ScanStruct(dest any) error { return errors.New("chdb: ScanStruct is not supported") }

// insertRE matches what PrepareBatch accepts: INSERT INTO table [(columns)].
var insertRE = regexp.MustCompile(`(?is)^\s*INSERT\s+INTO\s+((?:` + "`(?:[^`\\\\]|\\\\.)*`" + `|[\w.]+)(?:\.(?:` + "`(?:[^`\\\\]|\\\\.)*`" + `|\w+))?)\s*(?:\((.*)\))?\s*(?:VALUES\s*)?$`)

// PrepareBatch starts an insert: rows are appended to a Native block whose
// column types are the table's (DESCRIBE TABLE), as clickhouse-go's HTTP
// transport does.
func (e *Engine) PrepareBatch(ctx context.Context, query string, _ ...driver.PrepareBatchOption) (driver.Batch, error) {
	m := insertRE.FindStringSubmatch(query)
	if m == nil {
		return nil, fmt.Errorf("chdb: PrepareBatch: want INSERT INTO table [(columns)], got %q", query)
	}
	table := m[1]
	var want []string
	if strings.TrimSpace(m[2]) != "" {
		for _, c := range splitColumns(m[2]) {
			want = append(want, unquoteIdent(c))
		}
	}
	rs, err := e.Query(ctx, "DESCRIBE TABLE "+table)
	if err != nil {
		return nil, err
	}
	types := map[string]string{}
	var all []string
	for rs.Next() {
		vals := make([]string, len(rs.Columns()))
		dest := make([]any, len(vals))
		for i := range vals {
			dest[i] = &vals[i]
		}
		if err := rs.Scan(dest...); err != nil {
			return nil, err
		}
		name, typ, kind := vals[0], vals[1], vals[2]
		if kind == "MATERIALIZED" || kind == "ALIAS" {
			continue
		}
		types[name] = typ
		all = append(all, name)
	}
	if want == nil {
		want = all
	}
	sc := column.ServerContext{Revision: e.version.Revision, VersionMajor: e.version.Version.Major,
		VersionMinor: e.version.Version.Minor, VersionPatch: e.version.Version.Patch, Timezone: e.version.Timezone}
	b := &batch{e: e, ctx: ctx, table: table, block: &proto.Block{ServerContext: &sc}}
	for _, name := range want {
		typ, ok := types[name]
		if !ok {
			return nil, &clickhouse.Exception{Code: 16, Name: "DB::Exception", CodeName: "NO_SUCH_COLUMN_IN_TABLE",
				Message: fmt.Sprintf("No such column %s in table %s", name, table)}
		}
		if err := b.block.AddColumn(name, column.Type(typ)); err != nil {
			return nil, err
		}
		b.cols = append(b.cols, quoteIdent(name))
	}
	return b, nil
}

type batch struct {
	e     *Engine
	ctx   context.Context
	table string
	cols  []string
	block *proto.Block
	sent  bool
	err   error
}

func (b *batch) Append(v ...any) error {
	if b.sent {
		return clickhouse.ErrBatchAlreadySent
	}
	if b.err != nil {
		return b.err
	}
	if err := b.block.Append(v...); err != nil {
		b.err = fmt.Errorf("%w: %w", clickhouse.ErrBatchInvalid, err)
		return err
	}
	return nil
}

func (b *batch) Send() error {
	if b.sent {
		return clickhouse.ErrBatchAlreadySent
	}
	b.sent = true
	if b.err != nil {
		return b.err
	}
	if b.block.Rows() == 0 {
		return nil
	}
	var buf chproto.Buffer
	if err := b.block.Encode(&buf, 0); err != nil {
		return fmt.Errorf("chdb: encode block: %w", err)
	}
	f, err := os.CreateTemp(b.e.tmp, "batch-*.native")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(buf.Buf); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// INSERT … FROM INFILE is a client feature that libchdb silently
	// ignores; the file() table function reads the block on the engine side.
	q := fmt.Sprintf("INSERT INTO %s (%s) SELECT * FROM file(%s, 'Native')",
		b.table, strings.Join(b.cols, ", "), quoteString(filepath.Clean(f.Name())))
	_, err = b.e.run(b.ctx, q, "Null")
	return err
}

func (b *batch) Flush() error { return nil }
func (b *batch) Abort() error { b.sent = true; return nil }
func (b *batch) Close() error { b.sent = true; return nil }
func (b *batch) IsSent() bool { return b.sent }
func (b *batch) Rows() int    { return b.block.Rows() }
func (b *batch) Columns() []column.Interface {
	return append([]column.Interface(nil), b.block.Columns...)
}
func (b *batch) AppendStruct(v any) error      { return errors.New("chdb: AppendStruct is not supported") }
func (b *batch) Column(int) driver.BatchColumn { panic("chdb: batch.Column is not supported") }

var (
	_ driver.Rows  = (*rows)(nil)
	_ driver.Batch = (*batch)(nil)
)

// bind substitutes positional `?` placeholders outside quotes.
func bind(query string, args []any) (string, error) {
	if len(args) == 0 {
		return query, nil
	}
	var out strings.Builder
	n := 0
	var quote byte
	for i := 0; i < len(query); i++ {
		c := query[i]
		switch {
		case quote != 0:
			if c == '\\' && i+1 < len(query) {
				out.WriteByte(c)
				i++
				c = query[i]
			} else if c == quote {
				quote = 0
			}
		case c == '\'' || c == '`' || c == '"':
			quote = c
		case c == '?':
			if n >= len(args) {
				return "", fmt.Errorf("chdb: bind: more placeholders than the %d arguments", len(args))
			}
			lit, err := literal(args[n])
			if err != nil {
				return "", err
			}
			out.WriteString(lit)
			n++
			continue
		}
		out.WriteByte(c)
	}
	if n != len(args) {
		return "", fmt.Errorf("chdb: bind: %d placeholders for %d arguments", n, len(args))
	}
	return out.String(), nil
}

func literal(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return quoteString(x), nil
	case []byte:
		return quoteString(string(x)), nil
	case bool:
		if x {
			return "1", nil
		}
		return "0", nil
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return fmt.Sprint(x), nil
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32), nil
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), nil
	}
	return "", fmt.Errorf("chdb: bind: unsupported argument type %T", v)
}

func quoteString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

func quoteIdent(s string) string {
	return "`" + strings.NewReplacer(`\`, `\\`, "`", "\\`").Replace(s) + "`"
}

func unquoteIdent(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '`' && s[len(s)-1] == '`' {
		return strings.NewReplacer(`\\`, `\`, "\\`", "`").Replace(s[1 : len(s)-1])
	}
	return s
}

// splitColumns splits "a, `b,c`, d" at commas outside backquotes.
func splitColumns(s string) []string {
	var out []string
	start, inQuote := 0, false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && inQuote:
			i++
		case s[i] == '`':
			inQuote = !inQuote
		case s[i] == ',' && !inQuote:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// NewDatabase creates a uniquely named database for one test and drops it
// again when the test ends.
func (e *Engine) NewDatabase(ctx context.Context, prefix string) (string, func() error, error) {
	name := fmt.Sprintf("%s_%d", sanitize(prefix), time.Now().UnixNano())
	if err := e.Exec(ctx, "CREATE DATABASE "+quoteIdent(name)); err != nil {
		return "", nil, err
	}
	return name, func() error { return e.Exec(context.Background(), "DROP DATABASE IF EXISTS "+quoteIdent(name)) }, nil
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	if len(b.String()) > 40 {
		return b.String()[:40]
	}
	return b.String()
}

var _ driver.Conn = (*Engine)(nil)
