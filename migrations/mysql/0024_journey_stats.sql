-- Live counts per journey version and step, spread over a few rows each (shard) so the
-- processor's lanes do not queue on one.
CREATE TABLE journey_stats (
    tenant_id   VARCHAR(64)   NOT NULL,
    journey_id  VARCHAR(64)   NOT NULL,
    version     INT           NOT NULL,
    step        VARCHAR(128)  NOT NULL,
    counter     VARCHAR(32)   NOT NULL,
    shard       INT           NOT NULL,
    value       BIGINT        NOT NULL,
    PRIMARY KEY (tenant_id, journey_id, version, step, counter, shard)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
