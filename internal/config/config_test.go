package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// fileWord is the placeholder for a test's config file path in wanted errors.
var fileWord = regexp.MustCompile(`\bFILE\b`)

const sampleURL = "postgres://cdc:cdc@localhost:5432/app?sslmode=disable"

// clearEnv hides every CDC_* variable of the test process (an empty variable
// counts as unset) so the host environment cannot leak into a test.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "CDC_") {
			t.Setenv(name, "")
		}
	}
	for _, k := range Keys() {
		t.Setenv(EnvVar(k), "")
	}
}

func setEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cdc.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// wantDefaults is spelled out rather than taken from Default() so that a
// changed default fails here on purpose.
func wantDefaults() *Config {
	return &Config{
		Postgres: Postgres{URL: "", Table: "public.event_outbox", Publication: "cdc_outbox", Slot: "cdc_outbox", FailoverSlot: "auto"},
		ClickHouse: ClickHouse{
			Addr: []string{"localhost:9000"}, Database: "default", Table: "events",
			Username: "default", Password: "", DialTimeout: 10 * time.Second, Compression: "auto",
			InsertQuorum: "auto", InsertQuorumTimeout: time.Minute, EventContextType: "auto",
		},
		Batch:       Batch{Size: 1000, FlushInterval: time.Second, MaxRows: 100000, MaxBytes: 16 << 20, QueueBatches: 2},
		HTTP:        HTTP{Listen: "127.0.0.1:9187", Pprof: false},
		Log:         Log{Level: "info", Format: "auto"},
		Sentry:      Sentry{},
		Shutdown:    Shutdown{Grace: 30 * time.Second},
		Retry:       Retry{InitialBackoff: 500 * time.Millisecond, MaxBackoff: 30 * time.Second},
		Failed:      Failed{RetryInterval: 0, MaxAttempts: 5},
		Replication: Replication{StatusInterval: 10 * time.Second, StandbyRetry: 5 * time.Second, LeaderLease: 10 * time.Second, LagWarnBytes: 1 << 30},
		Heartbeat:   Heartbeat{Interval: 0},
		Outbox:      Outbox{Retention: 0},
		Verify:      Verify{Interval: 0, Window: time.Hour},
		Runtime:     Runtime{MaxProcs: 1},
	}
}

func TestDefault(t *testing.T) {
	if got, want := Default(), wantDefaults(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Default() =\n%+v\nwant\n%+v", got, want)
	}
	if err := Default().Validate(); err == nil || !strings.HasPrefix(err.Error(), "postgres.url is required") {
		t.Fatalf("Default().Validate() = %v, want postgres.url is required", err)
	}
}

func TestLoad(t *testing.T) {
	fullFile := `
postgres:
  url: "host=db user=cdc dbname=app"
  table: outbox.events_v2
  publication: pub_1
  slot: slot_1
  failover_slot: true
clickhouse:
  addr: "ch1:9000, ch2:9440"
  database: analytics
  table: Events
  username: writer
  password: "0123"
  dial_timeout: 3s
  compression: NONE
  event_context_type: String
batch:
  size: 5000
  flush_interval: 250ms
  max_rows: 50000
  max_bytes: 4MiB
  queue: 4
http:
  listen: ":0"
  pprof: true
log:
  level: DEBUG
  format: json
sentry:
  dsn: https://abc@o1.ingest.sentry.io/42
  environment: staging
  release: "1.10"
shutdown:
  grace: 1m
retry:
  initial_backoff: 1s
  max_backoff: 1m
failed:
  retry_interval: 5m
  max_attempts: 9
replication:
  status_interval: 3s
  standby_retry: 2s
  lag_warn_bytes: 64MiB
heartbeat:
  interval: 15s
outbox:
  retention: 168h
verify:
  interval: 10m
  window: 2h
runtime:
  max_procs: 2
`
	fullWant := &Config{
		Postgres: Postgres{URL: "host=db user=cdc dbname=app", Table: "outbox.events_v2", Publication: "pub_1", Slot: "slot_1", FailoverSlot: "true"},
		ClickHouse: ClickHouse{
			Addr: []string{"ch1:9000", "ch2:9440"}, Database: "analytics", Table: "Events",
			Username: "writer", Password: "0123", DialTimeout: 3 * time.Second, Compression: "none",
			InsertQuorum: "auto", InsertQuorumTimeout: time.Minute, EventContextType: "string",
		},
		Batch:       Batch{Size: 5000, FlushInterval: 250 * time.Millisecond, MaxRows: 50000, MaxBytes: 4 << 20, QueueBatches: 4},
		HTTP:        HTTP{Listen: ":0", Pprof: true},
		Log:         Log{Level: "debug", Format: "json"},
		Sentry:      Sentry{DSN: "https://abc@o1.ingest.sentry.io/42", Environment: "staging", Release: "1.10"},
		Shutdown:    Shutdown{Grace: time.Minute},
		Retry:       Retry{InitialBackoff: time.Second, MaxBackoff: time.Minute},
		Failed:      Failed{RetryInterval: 5 * time.Minute, MaxAttempts: 9},
		Replication: Replication{StatusInterval: 3 * time.Second, StandbyRetry: 2 * time.Second, LeaderLease: 10 * time.Second, LagWarnBytes: 64 << 20},
		Heartbeat:   Heartbeat{Interval: 15 * time.Second},
		Outbox:      Outbox{Retention: 168 * time.Hour},
		Verify:      Verify{Interval: 10 * time.Minute, Window: 2 * time.Hour},
		Runtime:     Runtime{MaxProcs: 2},
	}

	tests := []struct {
		name string
		file string // YAML; no file when empty
		env  map[string]string
		want func() *Config
	}{
		{
			name: "defaults with only the required URL from the environment",
			env:  map[string]string{"CDC_POSTGRES_URL": sampleURL},
			want: func() *Config { c := wantDefaults(); c.Postgres.URL = sampleURL; return c },
		},
		{
			name: "every key from the file",
			file: fullFile,
			want: func() *Config { return fullWant },
		},
		{
			name: "partial file keeps defaults for the rest",
			file: "postgres:\n  url: " + sampleURL + "\nbatch:\n  size: 10\n",
			want: func() *Config {
				c := wantDefaults()
				c.Postgres.URL = sampleURL
				c.Batch.Size = 10
				return c
			},
		},
		{
			name: "environment wins over the file",
			file: "postgres:\n  url: postgres://file/db\nbatch:\n  size: 10\n  flush_interval: 3s\nclickhouse:\n  addr: [a:1, b:2]\n",
			env: map[string]string{
				"CDC_POSTGRES_URL":         "postgres://env/db",
				"CDC_BATCH_SIZE":           "20",
				"CDC_BATCH_FLUSH_INTERVAL": "500ms",
				"CDC_CLICKHOUSE_ADDR":      "x:9000,y:9000",
			},
			want: func() *Config {
				c := wantDefaults()
				c.Postgres.URL = "postgres://env/db"
				c.Batch.Size = 20
				c.Batch.FlushInterval = 500 * time.Millisecond
				c.ClickHouse.Addr = []string{"x:9000", "y:9000"}
				return c
			},
		},
		{
			name: "environment sets keys and sections absent from the file",
			file: "postgres:\n  url: postgres://file/db\n",
			env: map[string]string{
				"CDC_CLICKHOUSE_PASSWORD":         "s3cret ",
				"CDC_BATCH_MAX_BYTES":             "1048576",
				"CDC_BATCH_MAX_ROWS":              "20000",
				"CDC_BATCH_QUEUE":                 "3",
				"CDC_HTTP_PPROF":                  "true",
				"CDC_LOG_FORMAT":                  "text",
				"CDC_SENTRY_DSN":                  "https://k@sentry.example.com/7",
				"CDC_SHUTDOWN_GRACE":              "5s",
				"CDC_RETRY_MAX_BACKOFF":           "10s",
				"CDC_FAILED_RETRY_INTERVAL":       "1m",
				"CDC_REPLICATION_STATUS_INTERVAL": "2s",
				"CDC_HEARTBEAT_INTERVAL":          "30s",
				"CDC_OUTBOX_RETENTION":            "24h",
			},
			want: func() *Config {
				c := wantDefaults()
				c.Postgres.URL = "postgres://file/db"
				c.ClickHouse.Password = "s3cret " // passwords are kept verbatim
				c.Batch.MaxBytes = 1 << 20
				c.Batch.MaxRows = 20000
				c.Batch.QueueBatches = 3
				c.HTTP.Pprof = true
				c.Log.Format = "text"
				c.Sentry.DSN = "https://k@sentry.example.com/7"
				c.Shutdown.Grace = 5 * time.Second
				c.Retry.MaxBackoff = 10 * time.Second
				c.Failed.RetryInterval = time.Minute
				c.Replication.StatusInterval = 2 * time.Second
				c.Heartbeat.Interval = 30 * time.Second
				c.Outbox.Retention = 24 * time.Hour
				return c
			},
		},
		{
			name: "empty environment variable counts as unset",
			file: "postgres:\n  url: postgres://file/db\nbatch:\n  size: 10\n",
			env:  map[string]string{"CDC_BATCH_SIZE": ""},
			want: func() *Config {
				c := wantDefaults()
				c.Postgres.URL = "postgres://file/db"
				c.Batch.Size = 10
				return c
			},
		},
		{
			name: "empty file and null sections",
			file: "# nothing yet\npostgres:\n  url: " + sampleURL + "\nbatch:\nhttp: {}\n",
			want: func() *Config { c := wantDefaults(); c.Postgres.URL = sampleURL; return c },
		},
		{
			name: "keys are case-insensitive",
			file: "Postgres:\n  URL: " + sampleURL + "\nBatch:\n  Size: 7\n",
			want: func() *Config {
				c := wantDefaults()
				c.Postgres.URL = sampleURL
				c.Batch.Size = 7
				return c
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			setEnv(t, tt.env)
			path := ""
			if tt.file != "" {
				path = writeFile(t, tt.file)
			}
			got, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if want := tt.want(); !reflect.DeepEqual(got, want) {
				t.Fatalf("Load =\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestClickHouseAddrList(t *testing.T) {
	tests := []struct {
		name, file string
		env        string
		want       []string
	}{
		{name: "single", env: "ch:9000", want: []string{"ch:9000"}},
		{name: "comma-separated with spaces and trailing comma", env: " a:9000 , b:9001,", want: []string{"a:9000", "b:9001"}},
		{name: "IPv6", env: "[::1]:9000,127.0.0.1:9000", want: []string{"[::1]:9000", "127.0.0.1:9000"}},
		{name: "comma-separated in the file", file: "clickhouse:\n  addr: a:1,b:2,c:3\n", want: []string{"a:1", "b:2", "c:3"}},
		{name: "YAML list in the file", file: "clickhouse:\n  addr:\n    - a:1\n    - b:2\n", want: []string{"a:1", "b:2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("CDC_POSTGRES_URL", sampleURL)
			t.Setenv("CDC_CLICKHOUSE_ADDR", tt.env)
			path := ""
			if tt.file != "" {
				path = writeFile(t, tt.file)
			}
			c, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !reflect.DeepEqual(c.ClickHouse.Addr, tt.want) {
				t.Fatalf("Addr = %q, want %q", c.ClickHouse.Addr, tt.want)
			}
		})
	}
}

func TestValidationErrors(t *testing.T) {
	tests := []struct {
		key  string            // the key the error must name (and start with)
		env  map[string]string // on top of a valid CDC_POSTGRES_URL
		file string            // optional YAML
		want string            // exact error text
	}{
		{"postgres.url", map[string]string{"CDC_POSTGRES_URL": ""}, "",
			`postgres.url is required (set it in the config file or CDC_POSTGRES_URL)`},
		{"postgres.url", map[string]string{"CDC_POSTGRES_URL": "mysql://root:hunter2@db/app"}, "",
			`postgres.url must be a postgres:// or postgresql:// URL or a key=value connection string (value not shown, it may contain a password) (from CDC_POSTGRES_URL)`},
		{"postgres.url", map[string]string{"CDC_POSTGRES_URL": ""}, "postgres:\n  url: 5432\n",
			`postgres.url must be a string (quote it in YAML) (from FILE line 2)`},
		{"postgres.url_file", map[string]string{"CDC_POSTGRES_URL_FILE": "/etc/cdc/url"}, "",
			`postgres.url_file must not be set together with postgres.url (postgres.url is set from CDC_POSTGRES_URL): set only one of them (from CDC_POSTGRES_URL_FILE)`},
		{"postgres.url_file", map[string]string{"CDC_POSTGRES_URL": "", "CDC_POSTGRES_URL_FILE": "/nonexistent/cdc/url"}, "",
			`postgres.url_file names a file that cannot be read: /nonexistent/cdc/url: no such file or directory (from CDC_POSTGRES_URL_FILE)`},
		{"postgres.table", map[string]string{"CDC_POSTGRES_TABLE": "public.Event-Outbox"}, "",
			`postgres.table must be [schema.]name with lower-case letters, digits and underscores (each part at most 63 characters), got "public.Event-Outbox" (from CDC_POSTGRES_TABLE)`},
		{"postgres.table", map[string]string{"CDC_POSTGRES_TABLE": "a.b.c"}, "",
			`postgres.table must be [schema.]name with lower-case letters, digits and underscores (each part at most 63 characters), got "a.b.c" (from CDC_POSTGRES_TABLE)`},
		{"postgres.publication", map[string]string{"CDC_POSTGRES_PUBLICATION": "1pub"}, "",
			`postgres.publication must be a valid publication name (lower-case letters, digits, underscore, not starting with a digit; at most 63), got "1pub" (from CDC_POSTGRES_PUBLICATION)`},
		{"postgres.slot", map[string]string{"CDC_POSTGRES_SLOT": "My-Slot"}, "",
			`postgres.slot must be a valid replication slot name (lower-case letters, digits, underscore; at most 63), got "My-Slot" (from CDC_POSTGRES_SLOT)`},
		{"postgres.slot", map[string]string{"CDC_POSTGRES_SLOT": strings.Repeat("s", 64)}, "",
			`postgres.slot must be a valid replication slot name (lower-case letters, digits, underscore; at most 63), got "` + strings.Repeat("s", 64) + `" (from CDC_POSTGRES_SLOT)`},
		{"postgres.failover_slot", map[string]string{"CDC_POSTGRES_FAILOVER_SLOT": "yes"}, "",
			`postgres.failover_slot must be one of auto, true, false, got "yes" (from CDC_POSTGRES_FAILOVER_SLOT)`},
		{"postgres.failover_slot", nil, "postgres:\n  failover_slot: 1\n",
			`postgres.failover_slot must be one of auto, true, false, got "1" (from FILE line 2)`},
		{"clickhouse.addr", map[string]string{"CDC_CLICKHOUSE_ADDR": "ch1:9000,ch2"}, "",
			`clickhouse.addr entries must be host:port with a port from 1 to 65535, got "ch2" (from CDC_CLICKHOUSE_ADDR)`},
		{"clickhouse.addr", map[string]string{"CDC_CLICKHOUSE_ADDR": "ch:99999"}, "",
			`clickhouse.addr entries must be host:port with a port from 1 to 65535, got "ch:99999" (from CDC_CLICKHOUSE_ADDR)`},
		{"clickhouse.addr", nil, "clickhouse:\n  addr: []\n",
			`clickhouse.addr must list at least one host:port (from FILE line 2)`},
		{"clickhouse.addr", nil, "clickhouse:\n  addr: [a:1, 2]\n",
			`clickhouse.addr must be a comma-separated string or a list of strings, got a list containing 2 (from FILE line 2)`},
		{"clickhouse.addr", nil, "clickhouse:\n  addr: {a: 1}\n",
			`clickhouse.addr must be a comma-separated string or a list of strings, got a mapping (from FILE line 2)`},
		{"clickhouse.database", map[string]string{"CDC_CLICKHOUSE_DATABASE": "my db"}, "",
			`clickhouse.database must be a database name of letters, digits and underscores, not starting with a digit, got "my db" (from CDC_CLICKHOUSE_DATABASE)`},
		{"clickhouse.table", nil, "clickhouse:\n  table: events;drop\n",
			`clickhouse.table must be a table name of letters, digits and underscores, not starting with a digit, got "events;drop" (from FILE line 2)`},
		{"clickhouse.username", map[string]string{"CDC_CLICKHOUSE_USERNAME": " "}, "",
			`clickhouse.username must not be empty (ClickHouse's built-in user is "default") (from CDC_CLICKHOUSE_USERNAME)`},
		{"clickhouse.password", nil, "clickhouse:\n  password: 0123\n",
			`clickhouse.password must be a string (quote it in YAML) (from FILE line 2)`},
		{"clickhouse.password_file", map[string]string{"CDC_CLICKHOUSE_PASSWORD_FILE": "/nonexistent/ch"}, "clickhouse:\n  password: \"hunter2\"\n",
			`clickhouse.password_file must not be set together with clickhouse.password (clickhouse.password is set from FILE line 2): set only one of them (from CDC_CLICKHOUSE_PASSWORD_FILE)`},
		{"clickhouse.password_file", nil, "clickhouse:\n  password_file: /nonexistent/ch\n",
			`clickhouse.password_file names a file that cannot be read: /nonexistent/ch: no such file or directory (from FILE line 2)`},
		{"clickhouse.dial_timeout", map[string]string{"CDC_CLICKHOUSE_DIAL_TIMEOUT": "0"}, "",
			`clickhouse.dial_timeout must be a duration greater than 0 like 500ms or 2s, got 0s (from CDC_CLICKHOUSE_DIAL_TIMEOUT)`},
		{"clickhouse.compression", map[string]string{"CDC_CLICKHOUSE_COMPRESSION": "zstd"}, "",
			`clickhouse.compression must be one of auto, lz4, none, got "zstd" (from CDC_CLICKHOUSE_COMPRESSION)`},
		{"clickhouse.cluster", map[string]string{"CDC_CLICKHOUSE_CLUSTER": "my-cluster"}, "",
			`clickhouse.cluster must be empty (one server) or a cluster name of the servers' remote_servers (letters, digits, underscores), got "my-cluster" (from CDC_CLICKHOUSE_CLUSTER)`},
		{"clickhouse.insert_quorum", map[string]string{"CDC_CLICKHOUSE_INSERT_QUORUM": "majority"}, "",
			`clickhouse.insert_quorum must be auto (a majority of the replicas on a Replicated* table, else off), 0 (off) or a number of replicas up to 255, got "majority" (from CDC_CLICKHOUSE_INSERT_QUORUM)`},
		{"clickhouse.insert_quorum", nil, "clickhouse:\n  insert_quorum: -1\n",
			`clickhouse.insert_quorum must be auto (a majority of the replicas on a Replicated* table, else off), 0 (off) or a number of replicas up to 255, got "-1" (from FILE line 2)`},
		{"clickhouse.event_context_type", map[string]string{"CDC_CLICKHOUSE_EVENT_CONTEXT_TYPE": "object"}, "",
			`clickhouse.event_context_type must be one of auto (JSON on ClickHouse 25.3 and later, else String), string, json, got "object" (from CDC_CLICKHOUSE_EVENT_CONTEXT_TYPE)`},
		{"clickhouse.insert_quorum_timeout", map[string]string{"CDC_CLICKHOUSE_INSERT_QUORUM_TIMEOUT": "500ms"}, "",
			`clickhouse.insert_quorum_timeout must be a duration of at least 1s in whole milliseconds like 60s, got 500ms (from CDC_CLICKHOUSE_INSERT_QUORUM_TIMEOUT)`},
		{"clickhouse.tls.enabled", map[string]string{"CDC_CLICKHOUSE_TLS_ENABLED": "yes please"}, "",
			`clickhouse.tls.enabled must be true or false, got "yes please" (from CDC_CLICKHOUSE_TLS_ENABLED)`},
		{"clickhouse.tls.enabled", nil, "clickhouse:\n  tls:\n    ca_file: /etc/ssl/ca.pem\n",
			`clickhouse.tls.enabled must be true when other clickhouse.tls keys are set (they would be ignored and the connection left unencrypted)`},
		{"clickhouse.tls.ca_file", nil, "clickhouse:\n  tls:\n    enabled: true\n    ca_file: /nonexistent/ca.pem\n",
			`clickhouse.tls.ca_file names a file that cannot be read: /nonexistent/ca.pem: no such file or directory (from FILE line 4)`},
		{"clickhouse.tls.cert_file", map[string]string{"CDC_CLICKHOUSE_TLS_ENABLED": "true", "CDC_CLICKHOUSE_TLS_KEY_FILE": "/k.pem"}, "",
			`clickhouse.tls.cert_file must be set together with clickhouse.tls.key_file (a client certificate and its key)`},
		{"clickhouse.tls.cert_file", map[string]string{"CDC_CLICKHOUSE_TLS_ENABLED": "true", "CDC_CLICKHOUSE_TLS_CERT_FILE": "/nonexistent/c.pem", "CDC_CLICKHOUSE_TLS_KEY_FILE": "/nonexistent/k.pem"}, "",
			`clickhouse.tls.cert_file names a file that cannot be read: /nonexistent/c.pem: no such file or directory (from CDC_CLICKHOUSE_TLS_CERT_FILE)`},
		{"clickhouse.tls.key_file", map[string]string{"CDC_CLICKHOUSE_TLS_ENABLED": "true", "CDC_CLICKHOUSE_TLS_CERT_FILE": "/c.pem"}, "",
			`clickhouse.tls.key_file must be set together with clickhouse.tls.cert_file (a client certificate and its key)`},
		{"clickhouse.tls.server_name", map[string]string{"CDC_CLICKHOUSE_TLS_ENABLED": "true", "CDC_CLICKHOUSE_TLS_SERVER_NAME": "ch.example.com:9440"}, "",
			`clickhouse.tls.server_name must be a host name like clickhouse.example.com (empty: the host of each clickhouse.addr entry), got "ch.example.com:9440" (from CDC_CLICKHOUSE_TLS_SERVER_NAME)`},
		{"clickhouse.tls.insecure_skip_verify", nil, "clickhouse:\n  tls:\n    insecure_skip_verify: sometimes\n",
			`clickhouse.tls.insecure_skip_verify must be true or false, got "sometimes" (from FILE line 3)`},
		{"batch.max_rows", map[string]string{"CDC_BATCH_MAX_ROWS": "lots"}, "",
			`batch.max_rows must be a positive integer, got "lots" (from CDC_BATCH_MAX_ROWS)`},
		{"batch.max_rows", nil, "batch:\n  max_rows: 0\n",
			`batch.max_rows must be a positive integer, got "0" (from FILE line 2)`},
		{"batch.max_rows", nil, "batch:\n  max_rows: 2000000\n",
			`batch.max_rows must be at most 1000000, got 2000000 (from FILE line 2)`},
		{"batch.size", map[string]string{"CDC_BATCH_SIZE": "banana"}, "",
			`batch.size must be a positive integer, got "banana" (from CDC_BATCH_SIZE)`},
		{"batch.size", nil, "batch:\n  size: 0\n",
			`batch.size must be a positive integer, got "0" (from FILE line 2)`},
		{"batch.size", nil, "batch:\n  size: 1000001\n",
			`batch.size must be at most 1000000, got 1000001 (from FILE line 2)`},
		{"batch.size", nil, "batch:\n  size: 1.5\n",
			`batch.size must be a positive integer, got "1.5" (from FILE line 2)`},
		{"batch.size", nil, "batch:\n  size: [1]\n",
			`batch.size must be a positive integer, got a list (from FILE line 2)`},
		{"batch.flush_interval", map[string]string{"CDC_BATCH_FLUSH_INTERVAL": "soon"}, "",
			`batch.flush_interval must be a duration like 500ms or 2s, got "soon" (from CDC_BATCH_FLUSH_INTERVAL)`},
		{"batch.flush_interval", nil, "batch:\n  flush_interval: 5\n",
			`batch.flush_interval must be a duration like 500ms or 2s, got "5" (from FILE line 2)`},
		{"batch.flush_interval", map[string]string{"CDC_BATCH_FLUSH_INTERVAL": "-1s"}, "",
			`batch.flush_interval must be a duration greater than 0 like 500ms or 2s, got -1s (from CDC_BATCH_FLUSH_INTERVAL)`},
		{"batch.max_bytes", map[string]string{"CDC_BATCH_MAX_BYTES": "16MB"}, "",
			`batch.max_bytes must be a positive number of bytes like 16777216 or 16MiB, got "16MB" (from CDC_BATCH_MAX_BYTES)`},
		{"batch.max_bytes", map[string]string{"CDC_BATCH_MAX_BYTES": "99999999999GiB"}, "",
			`batch.max_bytes must be a positive number of bytes like 16777216 or 16MiB, got "99999999999GiB" (from CDC_BATCH_MAX_BYTES)`},
		{"batch.queue", map[string]string{"CDC_BATCH_QUEUE": "-1"}, "",
			`batch.queue must be an integer, 0 or more, got "-1" (from CDC_BATCH_QUEUE)`},
		{"http.listen", map[string]string{"CDC_HTTP_LISTEN": "9187"}, "",
			`http.listen must be host:port like 127.0.0.1:9187 or :9187, got "9187" (from CDC_HTTP_LISTEN)`},
		{"http.listen", map[string]string{"CDC_HTTP_LISTEN": "localhost:http"}, "",
			`http.listen must be host:port like 127.0.0.1:9187 or :9187, got "localhost:http" (from CDC_HTTP_LISTEN)`},
		{"http.pprof", map[string]string{"CDC_HTTP_PPROF": "maybe"}, "",
			`http.pprof must be true or false, got "maybe" (from CDC_HTTP_PPROF)`},
		{"log.level", map[string]string{"CDC_LOG_LEVEL": "loud"}, "",
			`log.level must be one of debug, info, warn, error, got "loud" (from CDC_LOG_LEVEL)`},
		{"log.format", nil, "log:\n  format: pretty\n",
			`log.format must be one of auto, json, text, got "pretty" (from FILE line 2)`},
		{"sentry.dsn", map[string]string{"CDC_SENTRY_DSN": "not-a-dsn"}, "",
			`sentry.dsn must be empty (off) or a Sentry DSN like https://PUBLIC_KEY@o0.ingest.sentry.io/PROJECT_ID (value not shown) (from CDC_SENTRY_DSN)`},
		{"sentry.dsn_file", map[string]string{"CDC_SENTRY_DSN_FILE": "/nonexistent/dsn"}, "",
			`sentry.dsn_file names a file that cannot be read: /nonexistent/dsn: no such file or directory (from CDC_SENTRY_DSN_FILE)`},
		{"sentry.environment", nil, "sentry:\n  environment: [a]\n",
			`sentry.environment must be a string, got a list (from FILE line 2)`},
		{"sentry.release", nil, "sentry:\n  release: 1.10\n",
			`sentry.release must be a string (quote it in YAML), got 1.1 (from FILE line 2)`},
		{"shutdown.grace", map[string]string{"CDC_SHUTDOWN_GRACE": "0s"}, "",
			`shutdown.grace must be a duration greater than 0 like 500ms or 2s, got 0s (from CDC_SHUTDOWN_GRACE)`},
		{"retry.initial_backoff", map[string]string{"CDC_RETRY_INITIAL_BACKOFF": "fast"}, "",
			`retry.initial_backoff must be a duration like 500ms or 2s, got "fast" (from CDC_RETRY_INITIAL_BACKOFF)`},
		{"retry.max_backoff", map[string]string{"CDC_RETRY_MAX_BACKOFF": "100ms"}, "",
			`retry.max_backoff must not be less than retry.initial_backoff (500ms), got 100ms (from CDC_RETRY_MAX_BACKOFF)`},
		{"failed.retry_interval", map[string]string{"CDC_FAILED_RETRY_INTERVAL": "-5m"}, "",
			`failed.retry_interval must be a duration of 0 (off) or more like 30s, got -5m0s (from CDC_FAILED_RETRY_INTERVAL)`},
		{"failed.max_attempts", map[string]string{"CDC_FAILED_MAX_ATTEMPTS": "-1"}, "",
			`failed.max_attempts must be a positive integer, got "-1" (from CDC_FAILED_MAX_ATTEMPTS)`},
		{"replication.status_interval", map[string]string{"CDC_REPLICATION_STATUS_INTERVAL": "0"}, "",
			`replication.status_interval must be a duration greater than 0 like 500ms or 2s, got 0s (from CDC_REPLICATION_STATUS_INTERVAL)`},
		{"replication.standby_retry", nil, "replication:\n  standby_retry: 1 minute\n",
			`replication.standby_retry must be a duration like 500ms or 2s, got "1 minute" (from FILE line 2)`},
		{"replication.leader_lease", map[string]string{"CDC_REPLICATION_LEADER_LEASE": "500ms"}, "",
			`replication.leader_lease must be at least 1s, got 500ms (from CDC_REPLICATION_LEADER_LEASE)`},
		{"replication.lag_warn_bytes", map[string]string{"CDC_REPLICATION_LAG_WARN_BYTES": "lots"}, "",
			`replication.lag_warn_bytes must be a positive number of bytes like 16777216 or 16MiB, got "lots" (from CDC_REPLICATION_LAG_WARN_BYTES)`},
		{"runtime.max_procs", map[string]string{"CDC_RUNTIME_MAX_PROCS": "0"}, "",
			`runtime.max_procs must be a positive integer, got "0" (from CDC_RUNTIME_MAX_PROCS)`},
		{"heartbeat.interval", map[string]string{"CDC_HEARTBEAT_INTERVAL": "-1s"}, "",
			`heartbeat.interval must be a duration of 0 (off) or more like 30s, got -1s (from CDC_HEARTBEAT_INTERVAL)`},
		{"outbox.retention", map[string]string{"CDC_OUTBOX_RETENTION": "7d"}, "",
			`outbox.retention must be a duration like 500ms or 2s, got "7d" (from CDC_OUTBOX_RETENTION)`},
		{"verify.interval", map[string]string{"CDC_VERIFY_INTERVAL": "-1m"}, "",
			`verify.interval must be a duration of 0 (off) or more like 30s, got -1m0s (from CDC_VERIFY_INTERVAL)`},
		{"verify.window", map[string]string{"CDC_VERIFY_WINDOW": "0s"}, "",
			`verify.window must be a positive duration like 1h, got 0s (from CDC_VERIFY_WINDOW)`},
	}

	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.key] = true
		t.Run(tt.key+"/"+tt.want, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("CDC_POSTGRES_URL", sampleURL)
			setEnv(t, tt.env)
			path := ""
			if tt.file != "" {
				path = writeFile(t, tt.file)
			}
			c, err := Load(path)
			if err == nil {
				t.Fatalf("Load succeeded: %+v", c)
			}
			// FILE as a word: CDC_POSTGRES_URL_FILE stays as it is.
			want := fileWord.ReplaceAllLiteralString(tt.want, path)
			if err.Error() != want {
				t.Fatalf("error\n got: %s\nwant: %s", err, want)
			}
			var ke *KeyError
			if !errors.As(err, &ke) || ke.Key != tt.key || !strings.HasPrefix(err.Error(), tt.key+" ") {
				t.Fatalf("error %q is not a *KeyError for %s", err, tt.key)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error leaks a password: %s", err)
			}
		})
	}
	for _, k := range Keys() {
		if !covered[k] {
			t.Errorf("no validation error case for key %s", k)
		}
	}
}

func TestValidateOnStruct(t *testing.T) {
	c := Default()
	c.Postgres.URL = sampleURL
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate(defaults + URL) = %v", err)
	}
	c.Batch.Size = -3
	var ke *KeyError
	if err := c.Validate(); !errors.As(err, &ke) || err.Error() != "batch.size must be a positive integer, got -3" {
		t.Fatalf("Validate = %v", err)
	}
	c = Default()
	c.Postgres.URL = sampleURL
	c.Postgres.FailoverSlot = "on"
	if err := c.Validate(); !errors.As(err, &ke) || err.Error() != `postgres.failover_slot must be one of auto, true, false, got "on"` {
		t.Fatalf("Validate = %v", err)
	}
	c = Default()
	c.Postgres.URL = sampleURL
	c.ClickHouse.Addr = nil
	if err := c.Validate(); err == nil || err.Error() != "clickhouse.addr must list at least one host:port" {
		t.Fatalf("Validate = %v", err)
	}
}

func TestFileErrors(t *testing.T) {
	tests := []struct {
		name, file string
		want       string // exact, FILE replaced by the path
	}{
		{"typo in a key", "batch:\n  sise: 10\n",
			`config file FILE line 2: unknown key "batch.sise" (did you mean "batch.size"?)`},
		{"typo in a section", "bach:\n  size: 10\n",
			`config file FILE line 1: unknown key "bach" (did you mean "batch"?)`},
		{"right key, wrong section", "postgres:\n  url: x=y\n  dial_timeout: 3s\n",
			`config file FILE line 3: unknown key "postgres.dial_timeout" (did you mean "clickhouse.dial_timeout"?)`},
		{"unknown key without a near miss", "kafka:\n  brokers: b:9092\n",
			`config file FILE line 1: unknown key "kafka"`},
		{"flat dotted key", "batch.size: 10\n",
			`config file FILE line 1: unknown key "batch.size": write it nested, as batch: then size: indented below it`},
		{"section given a value", "batch: 10\n",
			`config file FILE line 1: batch must be a mapping of keys (size, flush_interval, max_rows, max_bytes, queue)`},
		{"nested group given a value", "clickhouse:\n  tls: true\n",
			`config file FILE line 2: clickhouse.tls must be a mapping of keys (enabled, ca_file, cert_file, key_file, server_name, insecure_skip_verify)`},
		{"typo in a nested key", "clickhouse:\n  tls:\n    ca_fil: /ca.pem\n",
			`config file FILE line 3: unknown key "clickhouse.tls.ca_fil" (did you mean "clickhouse.tls.ca_file"?)`},
		{"flat dotted nested key", "clickhouse:\n  tls.enabled: true\n",
			`config file FILE line 2: unknown key "clickhouse.tls.enabled": write it nested, as tls: then enabled: indented below it`},
		{"key set twice", "batch:\n  size: 1\n  Size: 2\n",
			`config file FILE line 3: batch.size is set twice (first at line 2)`},
		{"section twice", "batch:\n  size: 1\nlog:\n  level: info\nbatch:\n  queue: 3\n",
			`config file FILE line 5: section batch appears twice (first at line 1)`},
		{"top level is a list", "- a\n- b\n",
			`config file FILE line 1: the top level must be a mapping of sections such as postgres: and batch:`},
		{"invalid YAML", "batch:\n\tsize: 1\n",
			`config file FILE: invalid YAML: line 2: found character that cannot start any token`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("CDC_POSTGRES_URL", sampleURL)
			path := writeFile(t, tt.file)
			_, err := Load(path)
			want := strings.ReplaceAll(tt.want, "FILE", path)
			if err == nil || err.Error() != want {
				t.Fatalf("error\n got: %v\nwant: %s", err, want)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		clearEnv(t)
		path := filepath.Join(t.TempDir(), "nope.yaml")
		_, err := Load(path)
		if err == nil || err.Error() != "config file "+path+": no such file or directory" {
			t.Fatalf("error = %v", err)
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("error %v does not wrap os.ErrNotExist", err)
		}
	})
}

// TestExampleFile keeps config.example.yaml in step with the code: it must
// set every key, each to its default (postgres.url to a sample), and name
// the key's environment variable in the comment on it.
func TestExampleFile(t *testing.T) {
	clearEnv(t)
	const path = "../../config.example.yaml"
	got, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	want := Default()
	want.Postgres.URL = sampleURL
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("config.example.yaml differs from the defaults:\n got %+v\nwant %+v", got, want)
	}

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := checkFile(path, data)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	comments := map[string]string{}
	var walk func(prefix string, body *yaml.Node)
	walk = func(prefix string, body *yaml.Node) {
		for j := 0; j+1 < len(body.Content); j += 2 {
			k, v := body.Content[j], body.Content[j+1]
			comments[prefix+k.Value] = k.HeadComment + k.LineComment
			if v.Kind == yaml.MappingNode {
				walk(prefix+k.Value+".", v)
			}
		}
	}
	walk("", doc.Content[0])
	for _, k := range Keys() {
		if _, ok := lines[k]; !ok {
			t.Errorf("config.example.yaml does not set %s", k)
			continue
		}
		if c := comments[k]; !strings.Contains(c, "Env: "+EnvVar(k)) {
			t.Errorf("config.example.yaml: comment on %s does not name %s: %q", k, EnvVar(k), c)
		}
	}
}

func TestEnvVarAndUnknownEnv(t *testing.T) {
	if got := EnvVar("batch.flush_interval"); got != "CDC_BATCH_FLUSH_INTERVAL" {
		t.Fatalf("EnvVar = %s", got)
	}
	got := UnknownEnv([]string{"PATH=/bin", "CDC_BATCH_SIZE=1", "CDC_BATCH_SISE=1", "CDC_POSTGRES_URL=x=y",
		"CDC_X=1", "CDC_EMPTY=", "CDC_TEST_POSTGRES_URL=x", "CDC_TESTENV_DIR=/tmp", "CDC_SERVICE_HOST=10.0.0.1", "CDC_PORT=tcp://x", "CDC_BIN=/bin/cdc"})
	if want := []string{"CDC_BATCH_SISE", "CDC_X"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("UnknownEnv = %q, want %q", got, want)
	}
}

// An unknown CDC_* variable fails Load with the did-you-mean of the YAML
// path; a far miss gets no suggestion; known non-key variables pass.
func TestLoadRejectsUnknownEnv(t *testing.T) {
	for _, tt := range []struct {
		name, value, want string
	}{
		{"CDC_BATCH_SISE", "5", "unknown environment variable CDC_BATCH_SISE (did you mean CDC_BATCH_SIZE?)"},
		{"CDC_CLICKHOUSE_ADR", "x:9000", "unknown environment variable CDC_CLICKHOUSE_ADR (did you mean CDC_CLICKHOUSE_ADDR?)"},
		{"CDC_WHATEVER", "1", "unknown environment variable CDC_WHATEVER: "},
		{"CDC_TEST_POSTGRES_URL", "x", ""},
		{"CDC_BATCH_SISE", "", ""}, // empty counts as unset
	} {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("CDC_POSTGRES_URL", sampleURL)
			t.Setenv(tt.name, tt.value)
			_, err := Load("")
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Load: %v, want no error", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Load error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestEveryFieldHasAKey makes sure a field added to Config also gets a key
// (and therefore a default, an environment variable and an example entry).
func TestEveryFieldHasAKey(t *testing.T) {
	var c Config
	fields := map[uintptr]string{}
	cv := reflect.ValueOf(&c).Elem()
	var walk func(v reflect.Value, name string)
	walk = func(v reflect.Value, name string) {
		for j := 0; j < v.NumField(); j++ {
			f, fname := v.Field(j), name+"."+v.Type().Field(j).Name
			if f.Kind() == reflect.Struct {
				walk(f, fname) // a nested group such as ClickHouse.TLS
				continue
			}
			fields[f.Addr().Pointer()] = fname
		}
	}
	for i := 0; i < cv.NumField(); i++ {
		if cv.Type().Field(i).Name == "Views" {
			continue // a list in the file only, read by readViews (TestViews)
		}
		walk(cv.Field(i), cv.Type().Field(i).Name)
	}
	for _, s := range specs {
		p := reflect.ValueOf(s.ptr(&c)).Pointer()
		if _, ok := fields[p]; !ok {
			t.Errorf("key %s points at no field, or at one another key uses", s.key)
		}
		delete(fields, p)
	}
	for _, name := range fields {
		t.Errorf("field Config.%s has no key", name)
	}
}

// TestSecretFiles: each _file twin fills its secret from the file, without
// the trailing newline, and errors name the key and the file, never the
// secret.
func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	urlFile := write("url", sampleURL+"\n")
	pwFile := write("pw", "s3cr3t-hunter2\r\n")
	dsnFile := write("dsn", "https://k@sentry.example.com/7")
	empty := write("empty", "\n")
	badURL := write("bad-url", "mysql://root:hunter2@db/app\n")

	t.Run("read", func(t *testing.T) {
		clearEnv(t)
		setEnv(t, map[string]string{"CDC_POSTGRES_URL_FILE": urlFile, "CDC_SENTRY_DSN_FILE": dsnFile})
		c, err := Load(writeFile(t, "clickhouse:\n  password_file: "+pwFile+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		if c.Postgres.URL != sampleURL || c.ClickHouse.Password != "s3cr3t-hunter2" || c.Sentry.DSN != "https://k@sentry.example.com/7" {
			t.Fatalf("secrets = %q, %q, %q", c.Postgres.URL, c.ClickHouse.Password, c.Sentry.DSN)
		}
		if c.Postgres.URLFile != urlFile || c.ClickHouse.PasswordFile != pwFile {
			t.Fatalf("paths = %q, %q", c.Postgres.URLFile, c.ClickHouse.PasswordFile)
		}
	})
	for _, tt := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"empty file", map[string]string{"CDC_CLICKHOUSE_PASSWORD_FILE": empty},
			"clickhouse.password_file names an empty file: " + empty + " (from CDC_CLICKHOUSE_PASSWORD_FILE)"},
		{"bad value in the file", map[string]string{"CDC_POSTGRES_URL": "", "CDC_POSTGRES_URL_FILE": badURL},
			"postgres.url must be a postgres:// or postgresql:// URL or a key=value connection string (value not shown, it may contain a password) (read from postgres.url_file " + badURL + ")"},
		{"both from the environment", map[string]string{"CDC_SENTRY_DSN": "https://k@sentry.example.com/7", "CDC_SENTRY_DSN_FILE": dsnFile},
			"sentry.dsn_file must not be set together with sentry.dsn (sentry.dsn is set from CDC_SENTRY_DSN): set only one of them (from CDC_SENTRY_DSN_FILE)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("CDC_POSTGRES_URL", sampleURL)
			setEnv(t, tt.env)
			_, err := Load("")
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error\n got: %v\nwant: %s", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error leaks the secret: %s", err)
			}
		})
	}
}

func TestClickHouseLZ4(t *testing.T) {
	for _, tc := range []struct {
		compression string
		addr        []string
		want        bool
	}{
		{"auto", []string{"127.0.0.1:9000"}, false},
		{"auto", []string{"localhost:9000", "[::1]:9000", "127.0.0.2:9000"}, false},
		{"auto", []string{"127.0.0.1:9000", "10.0.0.7:9000"}, true},
		{"auto", []string{"clickhouse:9000"}, true}, // names are not resolved
		{"auto", []string{"ch.local"}, true},
		{"lz4", []string{"127.0.0.1:9000"}, true},
		{"none", []string{"10.0.0.7:9000"}, false},
	} {
		c := ClickHouse{Compression: tc.compression, Addr: tc.addr}
		if got := c.LZ4(); got != tc.want {
			t.Errorf("compression %s to %v: LZ4() = %v, want %v", tc.compression, tc.addr, got, tc.want)
		}
	}
}
