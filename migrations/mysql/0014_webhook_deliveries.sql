-- The webhook outbox and delivery log: one row per (endpoint, event), written in the transaction
-- of the status change that produced the event, so an event is never lost and never produced
-- without its change. `event_id` is the `webhook-id` (the same on every attempt). A dispatcher
-- claims due rows of one endpoint for a lease (`claimed_by`, `claimed_until`), found through
-- `webhook_deliveries_due` and then addressed by primary key; a dead one's rows come free when
-- the lease runs out. `state`: pending, delivered, failed (given up).
CREATE TABLE webhook_deliveries (
    endpoint_id      VARCHAR(40)   NOT NULL,
    event_id         VARCHAR(40)   NOT NULL,
    tenant_id        VARCHAR(64)   NOT NULL,
    event_type       VARCHAR(40)   NOT NULL,
    message_id       BINARY(16)    NULL,
    payload          MEDIUMTEXT    NOT NULL,
    state            VARCHAR(12)   NOT NULL,
    attempts         INT UNSIGNED  NOT NULL DEFAULT 0,
    created_at       DATETIME(6)   NOT NULL,
    retry_since      DATETIME(6)   NOT NULL,
    due_at           DATETIME(6)   NOT NULL,
    claimed_by       BINARY(16)    NULL,
    claimed_until    DATETIME(6)   NULL,
    last_attempt_at  DATETIME(6)   NULL,
    last_status      SMALLINT UNSIGNED NULL,
    last_latency_ms  INT UNSIGNED  NULL,
    last_error       VARCHAR(512)  NULL,
    PRIMARY KEY (endpoint_id, event_id),
    KEY webhook_deliveries_due (endpoint_id, state, due_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
