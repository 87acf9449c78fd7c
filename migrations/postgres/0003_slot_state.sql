-- Per-slot state: the consistent point of the slot's creation and whether the
-- backfill of rows that predate it has finished; the ids it still has to send.
CREATE TABLE IF NOT EXISTS cdc_slot_state (
    slot           TEXT PRIMARY KEY,
    consistent_lsn PG_LSN      NOT NULL,
    backfill_done  BOOLEAN     NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS cdc_backfill (
    slot TEXT   NOT NULL,
    id   BIGINT NOT NULL,
    PRIMARY KEY (slot, id)
);
