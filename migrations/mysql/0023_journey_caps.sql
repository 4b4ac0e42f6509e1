-- A tenant's frequency caps across journeys.
CREATE TABLE journey_caps (
    tenant_id   VARCHAR(64)  NOT NULL PRIMARY KEY,
    caps        TEXT         NOT NULL,
    updated_at  DATETIME(6)  NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
