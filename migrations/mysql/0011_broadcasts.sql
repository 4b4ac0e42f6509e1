-- Broadcasts to a segment: the request, how far the sender got (members are sent in user_id
-- order; `cursor` is the last one enqueued), its counts, and who is sending it (a lease, so a
-- broadcast whose sender died is taken over and resumed from the cursor).
CREATE TABLE broadcasts (
    tenant_id     VARCHAR(64)  NOT NULL,
    broadcast_id  VARCHAR(64)  NOT NULL,
    segment_id    VARCHAR(64)  NOT NULL,
    request       LONGTEXT     NOT NULL,
    status        VARCHAR(16)  NOT NULL,
    cursor_user   VARCHAR(255) NULL,
    enqueued      BIGINT       NOT NULL DEFAULT 0,
    skipped       BIGINT       NOT NULL DEFAULT 0,
    last_error    TEXT         NULL,
    owner         VARCHAR(64)  NULL,
    lease_until   DATETIME(6)  NULL,
    created_at    DATETIME(6)  NOT NULL,
    updated_at    DATETIME(6)  NOT NULL,
    PRIMARY KEY (tenant_id, broadcast_id),
    KEY broadcasts_running (status, lease_until)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
