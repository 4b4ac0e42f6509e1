-- Broadcasts to a segment, as in the cluster mode's MySQL.
CREATE TABLE broadcasts (
    tenant_id     TEXT    NOT NULL,
    broadcast_id  TEXT    NOT NULL,
    segment_id    TEXT    NOT NULL,
    request       TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    cursor_user   TEXT    NULL,
    enqueued      INTEGER NOT NULL DEFAULT 0,
    skipped       INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT    NULL,
    owner         TEXT    NULL,
    lease_until   INTEGER NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, broadcast_id)
);
