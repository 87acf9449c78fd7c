-- The analytics table: the outbox's columns plus the stream position each row
-- came from (_lsn: commit LSN of its transaction, _seq: its place in it),
-- which deduplication after restarts relies on, and the row's identity
-- (_fingerprint: a hash of the values it was born with; see sink.ColumnFingerprint).
-- event_context is JSON where the server's JSON type is generally available
-- (25.3 and later) and String before, or as clickhouse.event_context_type says.
--
-- With clickhouse.cluster set, the rows live in <table>_local, a
-- ReplicatedMergeTree made ON CLUSTER on every server (its ZooKeeper path and
-- replica name come from each server's shard and replica macros), and <table>
-- is a Distributed table over it for reads.
CREATE DATABASE IF NOT EXISTS {{.Database}}{{if .Cluster}} ON CLUSTER {{.Cluster}}{{end}};
CREATE TABLE IF NOT EXISTS {{.Database}}.{{.Local}}{{if .Cluster}} ON CLUSTER {{.Cluster}}{{end}} (
    id               Int64,
    event_type       {{.Symbol}},
    event_date_time  {{.Time}},
    environment      {{.Symbol}},
    event_context    {{.Context}},
    metadata_version Int64,
    created_at       {{.Time}},
    _lsn             UInt64,
    _seq             UInt64,
    _fingerprint     UInt64,
    _inserted_at     {{.Time}} DEFAULT {{.Now}}{{if .Modern}},
    INDEX _lsn_minmax _lsn TYPE minmax GRANULARITY 1{{end}}
) ENGINE = {{if .Cluster}}ReplicatedMergeTree('{{.ZKPath}}', '{replica}'){{else}}MergeTree{{end}}
PARTITION BY toYYYYMM(event_date_time)
ORDER BY (event_type, event_date_time, id);
{{- if .Cluster}}
CREATE TABLE IF NOT EXISTS {{.Database}}.{{.Table}} ON CLUSTER {{.Cluster}}
AS {{.Database}}.{{.Local}}
ENGINE = Distributed({{.Cluster}}, {{.Database}}, {{.Local}}, rand());
{{- end}}
