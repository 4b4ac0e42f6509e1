-- Each item's most similar items, best first, as JSON `[[id, similarity], ...]`.
CREATE TABLE item_neighbours (
    tenant_id   VARCHAR(64)    NOT NULL,
    item_id     VARBINARY(512) NOT NULL,
    neighbours  LONGTEXT       NOT NULL,
    updated_at  BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, item_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
