-- Webhook endpoints, the outbox and delivery log, and the labels receipts need: as in the
-- cluster mode's MySQL (migrations/mysql/0013-0015). Times are microseconds since the epoch.
CREATE TABLE webhook_endpoints (
    endpoint_id            TEXT    NOT NULL PRIMARY KEY,
    tenant_id              TEXT    NOT NULL,
    url                    TEXT    NOT NULL,
    description            TEXT    NOT NULL DEFAULT '',
    filter                 TEXT    NOT NULL,
    secret                 TEXT    NOT NULL,
    previous_secret        TEXT    NULL,
    previous_secret_until  INTEGER NULL,
    enabled                INTEGER NOT NULL,
    disabled_reason        TEXT    NULL,
    failing_since          INTEGER NULL,
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL
);
CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant_id, enabled);
CREATE TABLE webhook_deliveries (
    endpoint_id      TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    tenant_id        TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    message_id       BLOB    NULL,
    payload          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    retry_since      INTEGER NOT NULL,
    due_at           INTEGER NOT NULL,
    claimed_by       BLOB    NULL,
    claimed_until    INTEGER NULL,
    last_attempt_at  INTEGER NULL,
    last_status      INTEGER NULL,
    last_latency_ms  INTEGER NULL,
    last_error       TEXT    NULL,
    PRIMARY KEY (endpoint_id, event_id)
) WITHOUT ROWID;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, state, due_at);
CREATE TABLE webhook_messages (
    message_id  BLOB NOT NULL PRIMARY KEY,
    tags        TEXT NOT NULL,
    metadata    TEXT NOT NULL
) WITHOUT ROWID;
