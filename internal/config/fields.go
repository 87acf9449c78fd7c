package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

const envPrefix = "CDC"

// kind is how a key's value is written and parsed.
type kind int

const (
	kindString    kind = iota // any string
	kindWord                  // string, trimmed and lower-cased (enumerations)
	kindWordOrInt             // kindWord that may also be an unquoted YAML integer (auto | 0 | N)
	kindSecret                // string kept verbatim and never echoed in errors
	kindList                  // comma-separated string or YAML list of strings
	kindInt                   // positive integer
	kindCount                 // integer, 0 or more
	kindBytes                 // positive integer of bytes, optional KiB/MiB/GiB suffix
	kindBool                  // true/false
	kindDuration              // Go duration such as 500ms, 2s, 1h30m
	kindSwitch                // auto, true or false: a YAML boolean or a string, lower-cased
)

// spec describes one key: its default in the syntax a user would write in
// YAML or the environment, and where the parsed value goes. The order of
// specs is the documentation order and the order errors are reported in.
type spec struct {
	key  string
	kind kind
	def  string
	ptr  func(*Config) any // *string, *[]string, *int, *int64, *bool, *time.Duration
}

var specs = []spec{
	{"postgres.url", kindSecret, "", func(c *Config) any { return &c.Postgres.URL }},
	{"postgres.url_file", kindString, "", func(c *Config) any { return &c.Postgres.URLFile }},
	{"postgres.table", kindString, "public.event_outbox", func(c *Config) any { return &c.Postgres.Table }},
	{"postgres.publication", kindString, "cdc_outbox", func(c *Config) any { return &c.Postgres.Publication }},
	{"postgres.slot", kindString, "cdc_outbox", func(c *Config) any { return &c.Postgres.Slot }},
	{"postgres.failover_slot", kindSwitch, "auto", func(c *Config) any { return &c.Postgres.FailoverSlot }},

	{"clickhouse.addr", kindList, "localhost:9000", func(c *Config) any { return &c.ClickHouse.Addr }},
	{"clickhouse.database", kindString, "default", func(c *Config) any { return &c.ClickHouse.Database }},
	{"clickhouse.table", kindString, "events", func(c *Config) any { return &c.ClickHouse.Table }},
	{"clickhouse.username", kindString, "default", func(c *Config) any { return &c.ClickHouse.Username }},
	{"clickhouse.password", kindSecret, "", func(c *Config) any { return &c.ClickHouse.Password }},
	{"clickhouse.password_file", kindString, "", func(c *Config) any { return &c.ClickHouse.PasswordFile }},
	{"clickhouse.dial_timeout", kindDuration, "10s", func(c *Config) any { return &c.ClickHouse.DialTimeout }},
	{"clickhouse.compression", kindWord, "auto", func(c *Config) any { return &c.ClickHouse.Compression }},
	{"clickhouse.cluster", kindString, "", func(c *Config) any { return &c.ClickHouse.Cluster }},
	{"clickhouse.insert_quorum", kindWordOrInt, "auto", func(c *Config) any { return &c.ClickHouse.InsertQuorum }},
	{"clickhouse.insert_quorum_timeout", kindDuration, "1m0s", func(c *Config) any { return &c.ClickHouse.InsertQuorumTimeout }},
	{"clickhouse.event_context_type", kindWord, "auto", func(c *Config) any { return &c.ClickHouse.EventContextType }},
	{"clickhouse.tls.enabled", kindBool, "false", func(c *Config) any { return &c.ClickHouse.TLS.Enabled }},
	{"clickhouse.tls.ca_file", kindString, "", func(c *Config) any { return &c.ClickHouse.TLS.CAFile }},
	{"clickhouse.tls.cert_file", kindString, "", func(c *Config) any { return &c.ClickHouse.TLS.CertFile }},
	{"clickhouse.tls.key_file", kindString, "", func(c *Config) any { return &c.ClickHouse.TLS.KeyFile }},
	{"clickhouse.tls.server_name", kindString, "", func(c *Config) any { return &c.ClickHouse.TLS.ServerName }},
	{"clickhouse.tls.insecure_skip_verify", kindBool, "false", func(c *Config) any { return &c.ClickHouse.TLS.InsecureSkipVerify }},

	{"batch.size", kindInt, "1000", func(c *Config) any { return &c.Batch.Size }},
	{"batch.flush_interval", kindDuration, "1s", func(c *Config) any { return &c.Batch.FlushInterval }},
	{"batch.max_rows", kindInt, "100000", func(c *Config) any { return &c.Batch.MaxRows }},
	{"batch.max_bytes", kindBytes, "16777216", func(c *Config) any { return &c.Batch.MaxBytes }},
	{"batch.queue", kindCount, "2", func(c *Config) any { return &c.Batch.QueueBatches }},

	{"http.listen", kindString, "127.0.0.1:9187", func(c *Config) any { return &c.HTTP.Listen }},
	{"http.pprof", kindBool, "false", func(c *Config) any { return &c.HTTP.Pprof }},

	{"log.level", kindWord, "info", func(c *Config) any { return &c.Log.Level }},
	{"log.format", kindWord, "auto", func(c *Config) any { return &c.Log.Format }},

	{"sentry.dsn", kindSecret, "", func(c *Config) any { return &c.Sentry.DSN }},
	{"sentry.dsn_file", kindString, "", func(c *Config) any { return &c.Sentry.DSNFile }},
	{"sentry.environment", kindString, "", func(c *Config) any { return &c.Sentry.Environment }},
	{"sentry.release", kindString, "", func(c *Config) any { return &c.Sentry.Release }},

	{"shutdown.grace", kindDuration, "30s", func(c *Config) any { return &c.Shutdown.Grace }},

	{"retry.initial_backoff", kindDuration, "500ms", func(c *Config) any { return &c.Retry.InitialBackoff }},
	{"retry.max_backoff", kindDuration, "30s", func(c *Config) any { return &c.Retry.MaxBackoff }},

	{"failed.retry_interval", kindDuration, "0s", func(c *Config) any { return &c.Failed.RetryInterval }},
	{"failed.max_attempts", kindInt, "5", func(c *Config) any { return &c.Failed.MaxAttempts }},

	{"replication.status_interval", kindDuration, "10s", func(c *Config) any { return &c.Replication.StatusInterval }},
	{"replication.standby_retry", kindDuration, "5s", func(c *Config) any { return &c.Replication.StandbyRetry }},
	{"replication.leader_lease", kindDuration, "10s", func(c *Config) any { return &c.Replication.LeaderLease }},
	{"replication.lag_warn_bytes", kindBytes, "1073741824", func(c *Config) any { return &c.Replication.LagWarnBytes }},

	{"heartbeat.interval", kindDuration, "0s", func(c *Config) any { return &c.Heartbeat.Interval }},

	{"outbox.retention", kindDuration, "0s", func(c *Config) any { return &c.Outbox.Retention }},

	{"verify.interval", kindDuration, "0s", func(c *Config) any { return &c.Verify.Interval }},
	{"verify.window", kindDuration, "1h0m0s", func(c *Config) any { return &c.Verify.Window }},

	{"runtime.max_procs", kindInt, "1", func(c *Config) any { return &c.Runtime.MaxProcs }},
}

// Default returns the built-in defaults. Postgres.URL is empty, so the
// result does not pass [Config.Validate] until it is set.
func Default() *Config {
	c := &Config{}
	for _, s := range specs {
		if err := s.set(c, s.def); err != nil {
			panic("config: bad default for " + s.key + ": " + err.Error())
		}
	}
	return c
}

// set parses raw (a value from viper: a string from a default or the
// environment, or whatever YAML produced) and stores it in c.
func (s spec) set(c *Config, raw any) error {
	if raw == nil {
		raw = s.def
	}
	if s.kind == kindList {
		list, err := parseList(raw)
		if err != nil {
			return keyErr(s.key, "%s", err)
		}
		*s.ptr(c).(*[]string) = list
		return nil
	}

	text, isString, err := scalarText(raw)
	if err != nil {
		return keyErr(s.key, "must be %s, got %s", s.want(), err)
	}
	got := fmt.Sprintf("%q", text)

	switch s.kind {
	case kindWordOrInt:
		if _, isInt := raw.(int); !isString && !isInt {
			return keyErr(s.key, "must be a word or an integer, got %s", text)
		}
		*s.ptr(c).(*string) = strings.ToLower(strings.TrimSpace(text))
	case kindString, kindWord, kindSecret:
		if !isString {
			// Unquoted YAML numbers and booleans are rejected rather than
			// re-rendered: 0123, 1.10 or yes would not survive the round trip.
			if s.kind == kindSecret {
				return keyErr(s.key, "must be a string (quote it in YAML)")
			}
			return keyErr(s.key, "must be a string (quote it in YAML), got %s", text)
		}
		switch s.kind {
		case kindString:
			text = strings.TrimSpace(text)
		case kindWord:
			text = strings.ToLower(strings.TrimSpace(text))
		}
		*s.ptr(c).(*string) = text
	case kindSwitch:
		// An unquoted YAML true/false arrives as a bool: take it as written.
		text = strings.ToLower(strings.TrimSpace(text))
		if text != "auto" && text != "true" && text != "false" {
			return keyErr(s.key, "must be %s, got %s", s.want(), got)
		}
		*s.ptr(c).(*string) = text
	case kindInt, kindCount:
		n, err := strconv.ParseInt(strings.TrimSpace(text), 10, strconv.IntSize)
		if err != nil || n < 0 || (n == 0 && s.kind == kindInt) {
			return keyErr(s.key, "must be %s, got %s", s.want(), got)
		}
		*s.ptr(c).(*int) = int(n)
	case kindBytes:
		n, ok := parseBytes(text)
		if !ok || n <= 0 {
			return keyErr(s.key, "must be %s, got %s", s.want(), got)
		}
		*s.ptr(c).(*int64) = n
	case kindBool:
		b, err := strconv.ParseBool(strings.TrimSpace(text))
		if err != nil {
			return keyErr(s.key, "must be %s, got %s", s.want(), got)
		}
		*s.ptr(c).(*bool) = b
	case kindDuration:
		d, err := time.ParseDuration(strings.TrimSpace(text))
		if err != nil {
			return keyErr(s.key, "must be %s, got %s", s.want(), got)
		}
		*s.ptr(c).(*time.Duration) = d
	default:
		panic("config: unhandled kind for " + s.key)
	}
	return nil
}

// want describes the accepted syntax of a key in error messages.
func (s spec) want() string {
	switch s.kind {
	case kindInt:
		return "a positive integer"
	case kindCount:
		return "an integer, 0 or more"
	case kindBytes:
		return "a positive number of bytes like 16777216 or 16MiB"
	case kindBool:
		return "true or false"
	case kindSwitch:
		return "one of auto, true, false"
	case kindDuration:
		return "a duration like 500ms or 2s"
	default:
		return "a string"
	}
}

// scalarText renders a scalar from viper as text. isString reports whether
// it was a string already (YAML quoted/plain string, environment, default).
// Lists and mappings are errors describing what was found.
func scalarText(raw any) (text string, isString bool, err error) {
	switch v := raw.(type) {
	case string:
		return v, true, nil
	case bool:
		return strconv.FormatBool(v), false, nil
	case int:
		return strconv.Itoa(v), false, nil
	case int64:
		return strconv.FormatInt(v, 10), false, nil
	case uint64:
		return strconv.FormatUint(v, 10), false, nil
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), false, nil
	case time.Time: // an unquoted YAML date
		return v.Format(time.RFC3339), false, nil
	case []any, []string:
		return "", false, fmt.Errorf("a list")
	case map[string]any:
		return "", false, fmt.Errorf("a mapping")
	default:
		return "", false, fmt.Errorf("a %T", raw)
	}
}

// parseList accepts a comma-separated string or a YAML list of strings.
// Entries are trimmed and empty entries (e.g. a trailing comma) dropped.
func parseList(raw any) ([]string, error) {
	var items []string
	switch v := raw.(type) {
	case string:
		items = strings.Split(v, ",")
	case []string:
		items = v
	case []any:
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("must be a comma-separated string or a list of strings, got a list containing %v", e)
			}
			items = append(items, s)
		}
	default:
		text, _, err := scalarText(raw)
		if err != nil {
			return nil, fmt.Errorf("must be a comma-separated string or a list of strings, got %s", err)
		}
		return nil, fmt.Errorf("must be a comma-separated string or a list of strings, got %s", text)
	}
	list := []string{}
	for _, it := range items {
		if it = strings.TrimSpace(it); it != "" {
			list = append(list, it)
		}
	}
	return list, nil
}

// parseBytes parses "16777216", "16MiB", "512 KiB", "1GiB" (suffixes are
// case-insensitive; B is optional).
func parseBytes(text string) (int64, bool) {
	t := strings.TrimSpace(text)
	mult := int64(1)
	lower := strings.ToLower(t)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"b", 1}} {
		if strings.HasSuffix(lower, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(t[:len(t)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, false
	}
	return n * mult, true
}
