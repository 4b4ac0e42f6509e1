-- A tenant's webhook endpoints. `filter` is JSON: {"event_types": [...], "channels": [...],
-- "tags": [...]}. The signing secret is kept as is (HMAC needs it); after a rotation the previous
-- one signs beside it until `previous_secret_until`. `failing_since` is set by the first failed
-- delivery after a success and cleared by the next success: an endpoint failing for days is
-- disabled with a reason.
CREATE TABLE webhook_endpoints (
    endpoint_id            VARCHAR(40)   NOT NULL,
    tenant_id              VARCHAR(64)   NOT NULL,
    url                    VARCHAR(2048) NOT NULL,
    description            VARCHAR(255)  NOT NULL DEFAULT '',
    filter                 TEXT          NOT NULL,
    secret                 VARCHAR(128)  NOT NULL,
    previous_secret        VARCHAR(128)  NULL,
    previous_secret_until  DATETIME(6)   NULL,
    enabled                BOOLEAN       NOT NULL,
    disabled_reason        VARCHAR(512)  NULL,
    failing_since          DATETIME(6)   NULL,
    created_at             DATETIME(6)   NOT NULL,
    updated_at             DATETIME(6)   NOT NULL,
    PRIMARY KEY (endpoint_id),
    KEY webhook_endpoints_by_tenant (tenant_id, enabled)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
