-- The embedded mode's storage: one SQLite file holds the history, the durable queue, API keys and
-- the dedupe / idempotency memory. Times are microseconds since the Unix epoch (UTC); ids are
-- UUIDv7 as 16-byte blobs, time-ordered, so a time range is an id range (as in MySQL).

CREATE TABLE api_keys (
    key_id       TEXT    NOT NULL PRIMARY KEY,
    tenant_id    TEXT    NOT NULL,
    secret_hash  BLOB    NOT NULL,
    description  TEXT    NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER NULL
);

CREATE TABLE messages (
    id                   BLOB    NOT NULL PRIMARY KEY,
    tenant_id            TEXT    NOT NULL,
    channel              TEXT    NOT NULL,
    recipient            TEXT    NOT NULL,
    status               TEXT    NOT NULL,
    priority             TEXT    NOT NULL,
    attempts             INTEGER NOT NULL DEFAULT 0,
    provider             TEXT    NULL,
    provider_message_id  TEXT    NULL,
    idempotency_key      TEXT    NULL,
    send_at              INTEGER NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
) WITHOUT ROWID;
-- The dashboard's overview counts a window (an id range) by channel and status from this index
-- alone; it also serves the plain (tenant_id, id) listing as its prefix.
CREATE INDEX messages_by_time      ON messages (tenant_id, id, channel, status, created_at);
CREATE INDEX messages_by_recipient ON messages (tenant_id, recipient, id);
CREATE INDEX messages_by_channel   ON messages (tenant_id, channel, id);
CREATE INDEX messages_by_status    ON messages (tenant_id, status, id);
-- Delivery receipts find a message by the id its provider gave it, with the provider's name.
CREATE INDEX messages_by_provider_message_id ON messages (provider_message_id, provider);

-- The timeline; (message_id, attempt, status) is unique so recording a batch twice adds nothing.
CREATE TABLE message_events (
    message_id  BLOB    NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    detail      TEXT    NULL,
    PRIMARY KEY (message_id, attempt, status)
) WITHOUT ROWID;

-- The durable queue: accepted messages (due at once) and parked ones (send_at, quiet hours, retry
-- backoff) of every channel queue. A row leaves only in the transaction that records its outcome.
-- claimed_until serves HistoryStore::claim_due (a lease); the embedded consumer ignores claims of a
-- previous process because it is the only process using the file.
CREATE TABLE queue (
    seq            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    queue          TEXT    NOT NULL,
    message_id     BLOB    NOT NULL,
    envelope       TEXT    NOT NULL,
    due_at         INTEGER NOT NULL,
    claimed_until  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX queue_by_due ON queue (queue, due_at, seq);
CREATE INDEX queue_by_message ON queue (message_id);

-- Messages that exhausted their attempts (the cluster mode's dead-letter topic).
CREATE TABLE dead_letters (
    seq         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    message_id  BLOB    NOT NULL,
    envelope    TEXT    NOT NULL,
    at          INTEGER NOT NULL
);

-- Short-lived keys with an expiry: dedupe claims / sent marks (the cluster mode keeps them in
-- Redis) and Idempotency-Key records. Expired rows are ignored and swept periodically.
CREATE TABLE expiring_keys (
    key         TEXT    NOT NULL PRIMARY KEY,
    value       TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX expiring_keys_by_expiry ON expiring_keys (expires_at);
