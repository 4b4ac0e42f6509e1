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

CREATE TABLE message_events (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    message_id  BINARY(16)      NOT NULL,
    status      VARCHAR(16)     NOT NULL,
    at          DATETIME(6)     NOT NULL,
    detail      VARCHAR(1024)   NULL,
    PRIMARY KEY (id),
    KEY message_events_by_message (message_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
