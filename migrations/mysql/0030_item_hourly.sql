-- Popularity by hour since 1970; hours older than the longest ranking window are deleted.
CREATE TABLE item_hourly (
    tenant_id   VARCHAR(64)    NOT NULL,
    hour        BIGINT         NOT NULL,
    item_id     VARBINARY(512) NOT NULL,
    n           BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, hour, item_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
