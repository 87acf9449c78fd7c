-- The outbox with the original (polling design) schema. An existing table is
-- adopted as it is: nothing is dropped or rewritten.
CREATE TABLE IF NOT EXISTS {{.Table}} (
    id               BIGSERIAL PRIMARY KEY,
    event_type       VARCHAR(255) NOT NULL,
    event_date_time  TIMESTAMP    NOT NULL,
    environment      VARCHAR(50)  NOT NULL,
    event_context    JSONB        NOT NULL,
    metadata_version BIGINT       NOT NULL,
    status           VARCHAR(20)  NOT NULL DEFAULT 'pending',
    created_at       TIMESTAMP    NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at       TIMESTAMP    NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
