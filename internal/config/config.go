// Package config loads and validates the configuration of the cdc daemon and
// its subcommands.
//
// The configuration comes from three layers, later ones winning:
//
//  1. built-in defaults for every key (see [Default]),
//  2. an optional YAML file (config.example.yaml documents every key),
//  3. environment variables CDC_<SECTION>_<KEY>, e.g. CDC_BATCH_FLUSH_INTERVAL
//     for batch.flush_interval. An empty variable counts as unset.
//
// [Load] merges the layers with a private viper instance (no global state),
// rejects unknown keys in the file, parses every value strictly (junk such as
// "banana" for an integer is an error, never a silent zero) and validates the
// result. Every error names the offending key and, when it is known, where the
// value came from.
package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Config is the complete configuration of the daemon. Build one with [Load]
// (or [Default] in tests) and check hand-made values with [Config.Validate].
type Config struct {
	Postgres    Postgres
	ClickHouse  ClickHouse
	Batch       Batch
	HTTP        HTTP
	Log         Log
	Sentry      Sentry
	Shutdown    Shutdown
	Retry       Retry
	Failed      Failed
	Replication Replication
	Heartbeat   Heartbeat
	Outbox      Outbox
	Verify      Verify
	Runtime     Runtime
	// Views are the per-event-type tables `cdc migrate` makes (views:, a
	// list in the config file only; default none). See [View].
	Views []View
}

// Postgres is the source database, publication and replication slot.
type Postgres struct {
	// URL is a libpq/pgx connection string: postgres://… URL or key=value
	// form (postgres.url, required).
	URL string
	// URLFile names a file holding URL (postgres.url_file, default empty):
	// a Kubernetes Secret volume or a systemd credential. [Load] reads it,
	// trims the trailing newline and puts the content in URL; setting both
	// is an error.
	URLFile string
	// Table is the outbox table as [schema.]name (postgres.table,
	// default public.event_outbox); no schema means public.
	Table string
	// Publication is the publication name (postgres.publication, default cdc_outbox).
	Publication string
	// Slot is the logical replication slot name (postgres.slot, default cdc_outbox).
	Slot string
	// FailoverSlot is "auto", "true" or "false" (postgres.failover_slot,
	// default auto): whether the slot is a failover slot, which PostgreSQL
	// 17+ synchronizes to standbys so it survives a promotion. auto: where
	// the server supports it; true: required (an older server is a start-up
	// error); false: cdc never asks for it.
	FailoverSlot string
}

// ClickHouse is the destination server and table.
type ClickHouse struct {
	// Addr lists host:port native-protocol addresses (clickhouse.addr, a
	// comma-separated string or a YAML list; default localhost:9000).
	Addr []string
	// Database (clickhouse.database, default "default").
	Database string
	// Table (clickhouse.table, default events).
	Table string
	// Username (clickhouse.username, default "default").
	Username string
	// Password (clickhouse.password, default empty).
	Password string
	// PasswordFile names a file holding Password (clickhouse.password_file,
	// default empty); see [Postgres.URLFile].
	PasswordFile string
	// DialTimeout bounds connecting to a server (clickhouse.dial_timeout, default 10s).
	DialTimeout time.Duration
	// Compression of the native protocol: "lz4", "none" or "auto"
	// (clickhouse.compression, default auto); see [ClickHouse.LZ4].
	Compression string
	// Cluster is a cluster of the servers' remote_servers (clickhouse.cluster,
	// default empty: one server, or a Replicated* table used as it is). With
	// it, cdc migrate makes <table>_local (ReplicatedMergeTree, ON CLUSTER)
	// and <table> (Distributed), and cdc writes to <table>_local.
	Cluster string
	// InsertQuorum is "auto", or how many replicas must have written an
	// INSERT before it is acknowledged, 0 being off
	// (clickhouse.insert_quorum, default auto: a majority of the shard's
	// replicas when the table is Replicated*, else 0). See [ClickHouse.Quorum].
	InsertQuorum string
	// InsertQuorumTimeout bounds the wait for the quorum of one INSERT
	// (clickhouse.insert_quorum_timeout, default 60s).
	InsertQuorumTimeout time.Duration
	// EventContextType is the type `cdc migrate` gives event_context in a
	// table it creates: "auto" (JSON where the server's JSON type is
	// generally available, 25.3 and later; String before), "string" or
	// "json" (clickhouse.event_context_type, default auto). An existing
	// table keeps its type.
	EventContextType string
	// TLS secures every connection cdc opens to ClickHouse (clickhouse.tls.*).
	TLS ClickHouseTLS
}

// ClickHouseTLS configures TLS on the native protocol (ClickHouse's
// tcp_port_secure, 9440 by convention; ClickHouse Cloud accepts nothing
// else). The files are read again at every new connection, so renewed
// certificates take effect on the next reconnect without a restart.
type ClickHouseTLS struct {
	// Enabled turns TLS on (clickhouse.tls.enabled, default false). The
	// other clickhouse.tls keys are an error without it, so that a CA file
	// never gives the impression of a secured plain-text connection.
	Enabled bool
	// CAFile is a PEM bundle of the CAs the server's certificate must chain
	// to (clickhouse.tls.ca_file, default empty: the system's roots).
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// servers that authenticate clients by certificate
	// (clickhouse.tls.cert_file / key_file, default empty; both or neither).
	CertFile string
	KeyFile  string
	// ServerName is the name the server's certificate must carry
	// (clickhouse.tls.server_name, default empty: the host of each
	// clickhouse.addr entry).
	ServerName string
	// InsecureSkipVerify accepts any server certificate
	// (clickhouse.tls.insecure_skip_verify, default false; logged as a
	// warning). Traffic is encrypted but open to a man in the middle.
	InsecureSkipVerify bool
}

// Any reports whether any clickhouse.tls key other than enabled is set.
func (t ClickHouseTLS) Any() bool {
	return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify
}

// QuorumAuto is what [ClickHouse.Quorum] returns for insert_quorum: auto.
const QuorumAuto = -1

// Quorum returns clickhouse.insert_quorum as a number: QuorumAuto, 0 (off)
// or N. The value has passed Validate.
func (ch ClickHouse) Quorum() int {
	if ch.InsertQuorum == "auto" {
		return QuorumAuto
	}
	n, _ := strconv.Atoi(ch.InsertQuorum)
	return n
}

// Batch controls when buffered rows are cut into a batch and flushed.
type Batch struct {
	// Size is the number of rows at which a batch goes to a free writer
	// (batch.size, default 1000).
	Size int
	// FlushInterval is the longest time a row waits in the buffer while
	// the writer is free (batch.flush_interval, default 1s).
	FlushInterval time.Duration
	// MaxRows caps a batch that keeps filling while an insert is in
	// flight (batch.max_rows, default 100000; below batch.size it means
	// batch.size: batches do not grow).
	MaxRows int
	// MaxBytes caps the payload bytes of one batch (batch.max_bytes,
	// default 16 MiB; accepts plain bytes or KiB/MiB/GiB suffixes).
	MaxBytes int64
	// QueueBatches is how many full batches may wait for the writer
	// (batch.queue, default 2; 0: a full batch waits until the writer takes it).
	QueueBatches int
}

// HTTP is the metrics/health listener.
type HTTP struct {
	// Listen is host:port of /metrics, /healthz, /readyz (http.listen,
	// default 127.0.0.1:9187; port 0 picks a free port).
	Listen string
	// Pprof also serves net/http/pprof under /debug/pprof/ (http.pprof, default false).
	Pprof bool
}

// Log configures log/slog output.
type Log struct {
	// Level is debug, info, warn or error (log.level, default info).
	Level string
	// Format is auto, json or text (log.format, default auto: text/tint on
	// a terminal, JSON otherwise).
	Format string
}

// Sentry configures error reporting; an empty DSN turns it off.
type Sentry struct {
	DSN         string // sentry.dsn, default empty (off)
	DSNFile     string // sentry.dsn_file, default empty; see [Postgres.URLFile]
	Environment string // sentry.environment, default empty
	Release     string // sentry.release, default empty
}

// Shutdown configures the clean stop on SIGTERM/SIGINT.
type Shutdown struct {
	// Grace is how long flushing and confirming may take before the process
	// gives up (shutdown.grace, default 30s).
	Grace time.Duration
}

// Retry is the exponential backoff used when PostgreSQL or ClickHouse fail.
type Retry struct {
	InitialBackoff time.Duration // retry.initial_backoff, default 500ms
	MaxBackoff     time.Duration // retry.max_backoff, default 30s, >= InitialBackoff
}

// Failed controls the periodic re-drive of rows marked failed.
type Failed struct {
	// RetryInterval re-drives failed rows this often; 0 turns it off
	// (failed.retry_interval, default 0).
	RetryInterval time.Duration
	// MaxAttempts is how many deliveries a row gets before it stays failed
	// (failed.max_attempts, default 5).
	MaxAttempts int
}

// Replication configures the replication connection.
type Replication struct {
	// StatusInterval is how often a standby status update is sent, whatever
	// else happens (replication.status_interval, default 10s).
	StatusInterval time.Duration
	// StandbyRetry is how often a standby retries a slot held by another
	// process (replication.standby_retry, default 5s).
	StandbyRetry time.Duration
	// LeaderLease is how long a leader that stops renewing its lease may
	// still be writing; a successor waits it out before its first write
	// unless the old leader is known to be gone (replication.leader_lease,
	// default 10s).
	LeaderLease time.Duration
	// LagWarnBytes logs a warning (and sets cdc_slot_lag_warning) while the
	// slot's lag exceeds this many bytes (replication.lag_warn_bytes,
	// default 1 GiB).
	LagWarnBytes int64
}

// Heartbeat configures the pg_logical_emit_message heartbeat.
type Heartbeat struct {
	// Interval between heartbeats; 0 turns them off (heartbeat.interval, default 0).
	Interval time.Duration
}

// Outbox configures housekeeping of the outbox table.
type Outbox struct {
	// Retention deletes processed rows older than this; 0 keeps them
	// forever (outbox.retention, default 0).
	Retention time.Duration
}

// Verify configures the daemon's periodic verify (package verify).
type Verify struct {
	// Interval runs a verify of the trailing window this often while this
	// instance leads; 0 turns it off (verify.interval, default 0).
	Interval time.Duration
	// Window is how far back, by created_at, each periodic verify looks
	// (verify.window, default 1h).
	Window time.Duration
}

// Runtime tunes the Go runtime of the daemon.
type Runtime struct {
	// MaxProcs is how many threads may run Go code at once (GOMAXPROCS;
	// runtime.max_procs, default 1). One slot is read by one walsender, a
	// single PostgreSQL process; a daemon with one thread already outruns
	// it several times over (see docs/configuration.md), and more threads
	// only add scheduler and garbage collector work that competes with the
	// servers when they share the host. The GOMAXPROCS environment variable,
	// when set, wins.
	MaxProcs int
}

// KeyError is an invalid configuration value. Error() reads like
// `batch.size must be a positive integer, got "banana" (from CDC_BATCH_SIZE)`.
type KeyError struct {
	Key    string // dotted key, e.g. "batch.size"
	Msg    string // what is wrong, starting with a verb: "must be …", "is required …"
	Source string // where the value came from, e.g. "from CDC_BATCH_SIZE"; may be empty
}

func (e *KeyError) Error() string {
	s := e.Key + " " + e.Msg
	if e.Source != "" {
		s += " (" + e.Source + ")"
	}
	return s
}

func keyErr(key, format string, args ...any) *KeyError {
	return &KeyError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// EnvVar returns the environment variable that overrides key, e.g.
// "CDC_BATCH_FLUSH_INTERVAL" for "batch.flush_interval".
func EnvVar(key string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// Keys returns every configuration key in documentation order.
func Keys() []string {
	keys := make([]string, len(specs))
	for i, s := range specs {
		keys[i] = s.key
	}
	return keys
}

// LZ4 reports whether blocks go over the wire compressed with LZ4
// (clickhouse.compression). "auto" compresses unless every address is on
// this host ("localhost" or a loopback IP; names are not resolved): there
// compression only costs CPU at both ends, which clickhouse-client
// decides the same way.
func (c ClickHouse) LZ4() bool {
	switch c.Compression {
	case "lz4":
		return true
	case "none":
		return false
	}
	for _, addr := range c.Addr {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return true
		}
	}
	return false
}
