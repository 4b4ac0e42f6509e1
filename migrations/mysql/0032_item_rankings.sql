-- Popular and trending items, of all items (`category` '') and of each category.
CREATE TABLE item_rankings (
    tenant_id   VARCHAR(64)    NOT NULL,
    kind        VARCHAR(16)    NOT NULL,
    category    VARBINARY(512) NOT NULL,
    ranking     LONGTEXT       NOT NULL,
    updated_at  BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, kind, category)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
