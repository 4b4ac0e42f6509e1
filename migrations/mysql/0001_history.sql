-- Message history: one row per message (its current state) and one row per status change.
-- Ids are UUIDv7 stored as BINARY(16): time-ordered, so (tenant_id, ..., id) indexes serve both
-- filtering and keyset pagination newest-first, and a time range maps onto an id range.

CREATE TABLE tenants (
    id          VARCHAR(64)  NOT NULL,
    name        VARCHAR(255) NOT NULL,
    created_at  DATETIME(6)  NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- An API key is `ump_<key_id>_<secret>`; only a hash of the secret is stored.
CREATE TABLE api_keys (
    key_id       VARCHAR(32)  NOT NULL,
    tenant_id    VARCHAR(64)  NOT NULL,
    secret_hash  BINARY(32)   NOT NULL,
    description  VARCHAR(255) NOT NULL DEFAULT '',
    created_at   DATETIME(6)  NOT NULL,
    revoked_at   DATETIME(6)  NULL,
    PRIMARY KEY (key_id),
    KEY api_keys_by_tenant (tenant_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE messages (
    id                   BINARY(16)    NOT NULL,
    tenant_id            VARCHAR(64)   NOT NULL,
    channel              VARCHAR(63)   NOT NULL,
    recipient            VARCHAR(320)  NOT NULL,
    status               VARCHAR(16)   NOT NULL,
    priority             VARCHAR(8)    NOT NULL,
    attempts             INT UNSIGNED  NOT NULL DEFAULT 0,
    provider             VARCHAR(64)   NULL,
    provider_message_id  VARCHAR(255)  NULL,
    idempotency_key      VARCHAR(255)  NULL,
    send_at              DATETIME(6)   NULL,
    created_at           DATETIME(6)   NOT NULL,
    updated_at           DATETIME(6)   NOT NULL,
    PRIMARY KEY (id),
    KEY messages_by_tenant (tenant_id, id),
    KEY messages_by_recipient (tenant_id, recipient, id),
    KEY messages_by_channel (tenant_id, channel, id),
    KEY messages_by_status (tenant_id, status, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The timeline. (message_id, attempt, status) is unique so a batch recorded twice (a worker that
-- died after writing but before committing its offsets) adds nothing the second time.
CREATE TABLE message_events (
    message_id  BINARY(16)    NOT NULL,
    attempt     INT UNSIGNED  NOT NULL,
    status      VARCHAR(16)   NOT NULL,
    at          DATETIME(6)   NOT NULL,
    detail      VARCHAR(1024) NULL,
    PRIMARY KEY (message_id, attempt, status)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Messages waiting for a later time (send_at, quiet hours, retry backoff), by the queue (topic) they
-- go back to. Parking them here lets the worker commit its Kafka offsets instead of holding a
-- partition; a scheduler re-publishes them when due. A scheduler claims due rows with a lease (claimed_by/claimed_until), so any number of workers
-- share the table and a scheduler that dies only delays its rows by the lease.
CREATE TABLE deferred_messages (
    id             BINARY(16)   NOT NULL,
    queue          VARCHAR(249) NOT NULL,
    due_at         DATETIME(6)  NOT NULL,
    envelope       LONGBLOB     NOT NULL,
    claimed_by     BINARY(16)   NULL,
    claimed_until  DATETIME(6)  NULL,
    PRIMARY KEY (id),
    KEY deferred_by_due (queue, due_at),
    KEY deferred_by_claim (claimed_by)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
