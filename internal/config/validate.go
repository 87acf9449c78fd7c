package config

import (
	"errors"
	"io/fs"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var (
	// PostgreSQL unquoted identifiers as the daemon uses them: lower case,
	// so that quoted and unquoted spellings name the same object.
	pgIdent = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	// ReplicationSlotValidateName: lower-case letters, digits, underscore.
	pgSlot = regexp.MustCompile(`^[a-z0-9_]+$`)
	// ClickHouse identifiers usable without quoting (case-sensitive).
	chIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// maxPgIdent is NAMEDATALEN-1: PostgreSQL truncates longer names.
const maxPgIdent = 63

// Validate checks every section and returns the first problem as a
// *[KeyError] naming the key, or nil. [Load] calls it; call it yourself on a
// Config built in code. Commands that need only some sections (cdc migrate,
// cdc status) still get a fully checked Config from Load and use what they
// need.
func (c *Config) Validate() error {
	checks := []func() error{
		c.Postgres.validate,
		c.ClickHouse.validate,
		c.validateBatch,
		c.validateOutputs,
		c.validateTiming,
		c.validateViews,
	}
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func (p Postgres) validate() error {
	if err := validatePostgresURL(p.URL); err != nil {
		return err
	}
	if !validPgTable(p.Table) {
		return keyErr("postgres.table", "must be [schema.]name with lower-case letters, digits and underscores (each part at most 63 characters), got %q", p.Table)
	}
	if len(p.Publication) > maxPgIdent || !pgIdent.MatchString(p.Publication) {
		return keyErr("postgres.publication", "must be a valid publication name (lower-case letters, digits, underscore, not starting with a digit; at most 63), got %q", p.Publication)
	}
	if len(p.Slot) > maxPgIdent || !pgSlot.MatchString(p.Slot) {
		return keyErr("postgres.slot", "must be a valid replication slot name (lower-case letters, digits, underscore; at most 63), got %q", p.Slot)
	}
	switch p.FailoverSlot {
	case "auto", "true", "false":
	default:
		return keyErr("postgres.failover_slot", "must be one of auto, true, false, got %q", p.FailoverSlot)
	}
	return nil
}

// validatePostgresURL never echoes the value: it usually holds a password.
func validatePostgresURL(s string) error {
	const key = "postgres.url"
	if strings.TrimSpace(s) == "" {
		return keyErr(key, "is required (set it in the config file or %s)", EnvVar(key))
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return keyErr(key, "must be a postgres:// or postgresql:// URL or a key=value connection string (value not shown, it may contain a password)")
		}
		return nil
	}
	if !strings.Contains(s, "=") {
		return keyErr(key, "must be a postgres:// or postgresql:// URL or a key=value connection string (value not shown, it may contain a password)")
	}
	return nil
}

func validPgTable(t string) bool {
	parts := strings.Split(t, ".")
	if len(parts) > 2 {
		return false
	}
	for _, p := range parts {
		if len(p) > maxPgIdent || !pgIdent.MatchString(p) {
			return false
		}
	}
	return true
}

func (ch ClickHouse) validate() error {
	if len(ch.Addr) == 0 {
		return keyErr("clickhouse.addr", "must list at least one host:port")
	}
	for _, a := range ch.Addr {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || !validPort(port, 1) {
			return keyErr("clickhouse.addr", "entries must be host:port with a port from 1 to 65535, got %q", a)
		}
	}
	if !chIdent.MatchString(ch.Database) {
		return keyErr("clickhouse.database", "must be a database name of letters, digits and underscores, not starting with a digit, got %q", ch.Database)
	}
	if !chIdent.MatchString(ch.Table) {
		return keyErr("clickhouse.table", "must be a table name of letters, digits and underscores, not starting with a digit, got %q", ch.Table)
	}
	if strings.TrimSpace(ch.Username) == "" {
		return keyErr("clickhouse.username", "must not be empty (ClickHouse's built-in user is \"default\")")
	}
	if err := positive("clickhouse.dial_timeout", ch.DialTimeout); err != nil {
		return err
	}
	if ch.Compression != "lz4" && ch.Compression != "none" && ch.Compression != "auto" {
		return keyErr("clickhouse.compression", "must be one of auto, lz4, none, got %q", ch.Compression)
	}
	if ch.Cluster != "" && !chIdent.MatchString(ch.Cluster) {
		return keyErr("clickhouse.cluster", "must be empty (one server) or a cluster name of the servers' remote_servers (letters, digits, underscores), got %q", ch.Cluster)
	}
	if ch.InsertQuorum != "auto" {
		if n, err := strconv.Atoi(ch.InsertQuorum); err != nil || n < 0 || n > 255 {
			return keyErr("clickhouse.insert_quorum", "must be auto (a majority of the replicas on a Replicated* table, else off), 0 (off) or a number of replicas up to 255, got %q", ch.InsertQuorum)
		}
	}
	if ch.InsertQuorumTimeout < time.Second || ch.InsertQuorumTimeout%time.Millisecond != 0 {
		return keyErr("clickhouse.insert_quorum_timeout", "must be a duration of at least 1s in whole milliseconds like 60s, got %s", ch.InsertQuorumTimeout)
	}
	switch ch.EventContextType {
	case "auto", "string", "json":
	default:
		return keyErr("clickhouse.event_context_type", "must be one of auto (JSON on ClickHouse 25.3 and later, else String), string, json, got %q", ch.EventContextType)
	}
	return ch.TLS.validate()
}

// validate checks the TLS keys and that the files they name can be read
// now, so that a typo fails at start rather than at the first reconnect.
// The files are read again at every connection (certificate rotation).
func (t ClickHouseTLS) validate() error {
	if !t.Enabled {
		if t.Any() {
			return keyErr("clickhouse.tls.enabled", "must be true when other clickhouse.tls keys are set (they would be ignored and the connection left unencrypted)")
		}
		return nil
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		if t.CertFile == "" {
			return keyErr("clickhouse.tls.cert_file", "must be set together with clickhouse.tls.key_file (a client certificate and its key)")
		}
		return keyErr("clickhouse.tls.key_file", "must be set together with clickhouse.tls.cert_file (a client certificate and its key)")
	}
	for _, f := range []struct{ key, path string }{
		{"clickhouse.tls.ca_file", t.CAFile},
		{"clickhouse.tls.cert_file", t.CertFile},
		{"clickhouse.tls.key_file", t.KeyFile},
	} {
		if f.path == "" {
			continue
		}
		fh, err := os.Open(f.path)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return keyErr(f.key, "names a file that cannot be read: %s: %v", f.path, err)
		}
		fh.Close()
	}
	if strings.ContainsAny(t.ServerName, " /:") {
		return keyErr("clickhouse.tls.server_name", "must be a host name like clickhouse.example.com (empty: the host of each clickhouse.addr entry), got %q", t.ServerName)
	}
	return nil
}

// MaxBatchSize is the largest batch.size: what a restart was tested to
// recover (the sink's lookup of a re-sent batch goes in chunks of ids).
const MaxBatchSize = 1_000_000

// validateBatch checks batch.*.
func (c *Config) validateBatch() error {
	if c.Batch.Size <= 0 {
		return keyErr("batch.size", "must be a positive integer, got %d", c.Batch.Size)
	}
	if c.Batch.Size > MaxBatchSize {
		return keyErr("batch.size", "must be at most %d, got %d", MaxBatchSize, c.Batch.Size)
	}
	if err := positive("batch.flush_interval", c.Batch.FlushInterval); err != nil {
		return err
	}
	if c.Batch.MaxRows <= 0 {
		return keyErr("batch.max_rows", "must be a positive integer, got %d", c.Batch.MaxRows)
	}
	if c.Batch.MaxRows > MaxBatchSize {
		return keyErr("batch.max_rows", "must be at most %d, got %d", MaxBatchSize, c.Batch.MaxRows)
	}
	if c.Batch.MaxBytes <= 0 {
		return keyErr("batch.max_bytes", "must be a positive number of bytes like 16777216 or 16MiB, got %d", c.Batch.MaxBytes)
	}
	if c.Batch.QueueBatches < 0 {
		return keyErr("batch.queue", "must be an integer, 0 or more, got %d", c.Batch.QueueBatches)
	}
	return nil
}

// validateOutputs checks what the process serves and reports to: http.*,
// log.*, sentry.*.
func (c *Config) validateOutputs() error {
	if host, port, err := net.SplitHostPort(c.HTTP.Listen); err != nil || strings.ContainsAny(host, " /") || !validPort(port, 0) {
		return keyErr("http.listen", "must be host:port like 127.0.0.1:9187 or :9187, got %q", c.HTTP.Listen)
	}

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return keyErr("log.level", "must be one of debug, info, warn, error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "auto", "json", "text":
	default:
		return keyErr("log.format", "must be one of auto, json, text, got %q", c.Log.Format)
	}

	if c.Sentry.DSN != "" {
		u, err := url.Parse(c.Sentry.DSN)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User == nil || strings.Trim(u.Path, "/") == "" {
			return keyErr("sentry.dsn", "must be empty (off) or a Sentry DSN like https://PUBLIC_KEY@o0.ingest.sentry.io/PROJECT_ID (value not shown)")
		}
	}
	return nil
}

// validateTiming checks the intervals, backoffs and limits of the other
// sections.
func (c *Config) validateTiming() error {
	if err := positive("shutdown.grace", c.Shutdown.Grace); err != nil {
		return err
	}
	if err := positive("retry.initial_backoff", c.Retry.InitialBackoff); err != nil {
		return err
	}
	if err := positive("retry.max_backoff", c.Retry.MaxBackoff); err != nil {
		return err
	}
	if c.Retry.MaxBackoff < c.Retry.InitialBackoff {
		return keyErr("retry.max_backoff", "must not be less than retry.initial_backoff (%s), got %s", c.Retry.InitialBackoff, c.Retry.MaxBackoff)
	}
	if err := notNegative("failed.retry_interval", c.Failed.RetryInterval); err != nil {
		return err
	}
	if c.Failed.MaxAttempts <= 0 {
		return keyErr("failed.max_attempts", "must be a positive integer, got %d", c.Failed.MaxAttempts)
	}
	if err := positive("replication.status_interval", c.Replication.StatusInterval); err != nil {
		return err
	}
	if err := positive("replication.standby_retry", c.Replication.StandbyRetry); err != nil {
		return err
	}
	if c.Replication.LeaderLease < time.Second {
		return keyErr("replication.leader_lease", "must be at least 1s, got %s", c.Replication.LeaderLease)
	}
	if err := notNegative("heartbeat.interval", c.Heartbeat.Interval); err != nil {
		return err
	}
	if err := notNegative("outbox.retention", c.Outbox.Retention); err != nil {
		return err
	}
	if err := notNegative("verify.interval", c.Verify.Interval); err != nil {
		return err
	}
	if c.Verify.Window <= 0 {
		return keyErr("verify.window", "must be a positive duration like 1h, got %s", c.Verify.Window)
	}
	if c.Runtime.MaxProcs <= 0 {
		return keyErr("runtime.max_procs", "must be a positive integer, got %d", c.Runtime.MaxProcs)
	}
	return nil
}

func positive(key string, d time.Duration) error {
	if d <= 0 {
		return keyErr(key, "must be a duration greater than 0 like 500ms or 2s, got %s", d)
	}
	return nil
}

func notNegative(key string, d time.Duration) error {
	if d < 0 {
		return keyErr(key, "must be a duration of 0 (off) or more like 30s, got %s", d)
	}
	return nil
}

// validPort reports whether port is a decimal number from lo to 65535.
func validPort(port string, lo int) bool {
	if port == "" || strings.Trim(port, "0123456789") != "" {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= lo && n <= 65535
}
