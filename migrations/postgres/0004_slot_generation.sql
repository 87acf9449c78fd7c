-- Set when a slot is created again for an outbox that already had one (after
-- a lost slot): rows the old slot delivered but had not yet marked may then
-- be in ClickHouse under old positions, so that backfill checks every id.
ALTER TABLE cdc_slot_state ADD COLUMN IF NOT EXISTS recreated BOOLEAN NOT NULL DEFAULT false;
