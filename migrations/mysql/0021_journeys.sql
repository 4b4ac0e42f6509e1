-- Journeys: each journey's status and the version people enter now (0022 keeps every version,
-- 0023 the tenant's frequency caps, 0024 the live counts, 0025 the outbox of journey messages).
CREATE TABLE journeys (
    tenant_id        VARCHAR(64)  NOT NULL,
    journey_id       VARCHAR(64)  NOT NULL,
    status           VARCHAR(16)  NOT NULL,
    current_version  INT          NOT NULL,
    created_at       DATETIME(6)  NOT NULL,
    updated_at       DATETIME(6)  NOT NULL,
    PRIMARY KEY (tenant_id, journey_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
