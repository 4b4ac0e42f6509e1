-- A tenant's product catalog (`PUT /v1/catalog/items/{id}`): the item as JSON, with its category
-- and stock beside it for listing. Ids and categories are VARBINARY: compared and ordered byte for
-- byte (as in SQLite), so `a` and `a ` are two items, which a PAD SPACE collation would merge.
CREATE TABLE catalog_items (
    tenant_id   VARCHAR(64)    NOT NULL,
    item_id     VARBINARY(512) NOT NULL,
    category    VARBINARY(512) NULL,
    in_stock    BOOLEAN        NOT NULL,
    item        LONGTEXT       NOT NULL,
    created_at  DATETIME(6)    NOT NULL,
    updated_at  DATETIME(6)    NOT NULL,
    PRIMARY KEY (tenant_id, item_id),
    KEY catalog_items_by_category (tenant_id, category, item_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
