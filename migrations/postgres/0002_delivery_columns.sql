-- Defaults so producers can omit bookkeeping columns, and what poison-row
-- handling records. ADD COLUMN with a constant default does not rewrite the
-- table (PostgreSQL 11+).
ALTER TABLE {{.Table}} ALTER COLUMN status SET DEFAULT 'pending';
ALTER TABLE {{.Table}} ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'utc');
ALTER TABLE {{.Table}} ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'utc');
ALTER TABLE {{.Table}} ADD COLUMN IF NOT EXISTS last_error TEXT;
ALTER TABLE {{.Table}} ADD COLUMN IF NOT EXISTS attempts INTEGER NOT NULL DEFAULT 0;
-- Rows still to deliver (backfill, status, retry-failed) without scanning
-- the processed history.
CREATE INDEX IF NOT EXISTS {{.UnprocessedIndex}} ON {{.Table}} (id) WHERE status <> 'processed';
