-- Leases fence writers (see internal/lease): the slot's leader and the
-- re-drive of failed rows each hold one. term grows with every new holder
-- and is checked by the marking statements; expires_at is how long a holder
-- that stopped renewing may still be writing, which a successor waits out.
CREATE TABLE IF NOT EXISTS cdc_lease (
    name       TEXT PRIMARY KEY,
    term       BIGINT      NOT NULL,
    holder     TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
