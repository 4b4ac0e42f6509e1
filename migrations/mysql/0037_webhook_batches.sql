-- The webhook outbox's common case: the events one status transaction makes for one endpoint,
-- up to 256, in one row (`body`: the events, encoded), so an event costs the history transaction
-- a share of one insert instead of a row with two index entries. A dispatcher claims a batch
-- whole (`claimed_by`, `claimed_until`, as for `webhook_deliveries`) and records its round once:
-- `state` becomes done and `outcome` keeps each event's first attempt; an event whose first
-- attempt failed, or that the round did not reach, gets a row of its own in
-- `webhook_deliveries` and is retried there. `batch_key`: the first event id, then a digest of
-- every id in the batch, so the same batch recorded twice is one row.
CREATE TABLE webhook_batches (
    endpoint_id    VARCHAR(40)   NOT NULL,
    batch_key      VARCHAR(64)   NOT NULL,
    tenant_id      VARCHAR(64)   NOT NULL,
    last_event     VARCHAR(40)   NOT NULL,
    events         INT UNSIGNED  NOT NULL,
    body           LONGBLOB      NOT NULL,
    state          VARCHAR(12)   NOT NULL,
    created_at     DATETIME(6)   NOT NULL,
    due_at         DATETIME(6)   NOT NULL,
    claimed_by     BINARY(16)    NULL,
    claimed_until  DATETIME(6)   NULL,
    outcome        MEDIUMBLOB    NULL,
    PRIMARY KEY (endpoint_id, batch_key),
    KEY webhook_batches_due (endpoint_id, state, due_at),
    KEY webhook_batches_newest (endpoint_id, last_event)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
