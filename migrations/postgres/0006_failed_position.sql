-- Where in the stream a row was when ClickHouse rejected it (the commit LSN
-- of its transaction and its place in it). A re-drive stores the row at that
-- same position: if the stream later sends the transaction again (a restart
-- before the slot confirmed it, or a PostgreSQL crash, which can forget a
-- confirmation), the sink's check of that position finds the row. Stored at
-- position 0, as before, it was inserted a second time. NULL for rows that
-- never went through the stream (failed under the original polling worker).
ALTER TABLE {{.Table}} ADD COLUMN IF NOT EXISTS failed_lsn PG_LSN;
ALTER TABLE {{.Table}} ADD COLUMN IF NOT EXISTS failed_seq BIGINT;
