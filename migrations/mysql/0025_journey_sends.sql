-- The outbox of journey messages: written in the processor's transaction, enqueued by the
-- API's relay under a lease, then deleted.
CREATE TABLE journey_sends (
    id           BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tenant_id    VARCHAR(64)  NOT NULL,
    user_id      VARCHAR(255) NOT NULL,
    send         LONGTEXT     NOT NULL,
    created_at   DATETIME(6)  NOT NULL,
    owner        VARCHAR(64)  NULL,
    lease_until  DATETIME(6)  NULL,
    KEY journey_sends_due (lease_until)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
