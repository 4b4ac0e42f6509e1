-- A tenant's product catalog, as in the cluster mode's MySQL.
CREATE TABLE catalog_items (
    tenant_id   TEXT    NOT NULL,
    item_id     TEXT    NOT NULL,
    category    TEXT    NULL,
    in_stock    INTEGER NOT NULL,
    item        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, item_id)
);

CREATE INDEX catalog_items_by_category ON catalog_items (tenant_id, category, item_id);
