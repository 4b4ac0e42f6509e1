-- Every version of a journey: people finish on the version they entered.
CREATE TABLE journey_versions (
    tenant_id   VARCHAR(64)  NOT NULL,
    journey_id  VARCHAR(64)  NOT NULL,
    version     INT          NOT NULL,
    definition  LONGTEXT     NOT NULL,
    created_at  DATETIME(6)  NOT NULL,
    PRIMARY KEY (tenant_id, journey_id, version)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
