-- Recommendations' model, kept from the event stream (`ump_core::recommendations`).
--
-- The processor stages each batch's item changes (`ItemChanges`, postcard) in `item_changes`, in
-- the batch's own transaction: inserts only, so lanes never wait on each other for a popular
-- item's counts. The upkeep loop takes staged changes into the counts and deletes them in one
-- transaction (exactly once), marks the items whose neighbour lists went stale, rebuilds those,
-- and ranks popular and trending items. Ids are VARBINARY, as in `catalog_items`.
CREATE TABLE item_changes (
    id          BIGINT       NOT NULL AUTO_INCREMENT,
    tenant_id   VARCHAR(64)  NOT NULL,
    changes     LONGBLOB     NOT NULL,
    created_at  BIGINT       NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
