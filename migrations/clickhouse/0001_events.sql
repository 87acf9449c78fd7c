-- The analytics table: the outbox's columns plus the stream position each row
-- came from (_lsn: commit LSN of its transaction, _seq: its place in it),
-- which deduplication after restarts relies on, and the row's identity
-- (_fingerprint: a hash of the values it was born with; see sink.ColumnFingerprint).
CREATE DATABASE IF NOT EXISTS {{.Database}};
CREATE TABLE IF NOT EXISTS {{.Database}}.{{.Table}} (
    id               Int64,
    event_type       {{.Symbol}},
    event_date_time  {{.Time}},
    environment      {{.Symbol}},
    event_context    String,
    metadata_version Int64,
    created_at       {{.Time}},
    _lsn             UInt64,
    _seq             UInt64,
    _fingerprint     UInt64,
    _inserted_at     {{.Time}} DEFAULT {{.Now}}{{if .Modern}},
    INDEX _lsn_minmax _lsn TYPE minmax GRANULARITY 1{{end}}
) ENGINE = MergeTree
PARTITION BY toYYYYMM(event_date_time)
ORDER BY (event_type, event_date_time, id);
