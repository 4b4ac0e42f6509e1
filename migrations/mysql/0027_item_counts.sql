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

-- People who viewed or bought each item. `stale_since`: its neighbour list needs rebuilding since
-- then (the first change not yet rebuilt); `changed_at`: its latest change. Times here are
-- microseconds since 1970, as in SQLite.
CREATE TABLE item_people (
    tenant_id    VARCHAR(64)    NOT NULL,
    item_id      VARBINARY(512) NOT NULL,
    people       BIGINT         NOT NULL,
    stale_since  BIGINT         NULL,
    changed_at   BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, item_id),
    KEY item_people_stale (stale_since)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- People who saw both items, kept in both items' rows.
CREATE TABLE item_pairs (
    tenant_id   VARCHAR(64)    NOT NULL,
    item_id     VARBINARY(512) NOT NULL,
    partner_id  VARBINARY(512) NOT NULL,
    co          BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, item_id, partner_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Popularity by hour since 1970; hours older than the longest ranking window are deleted.
CREATE TABLE item_hourly (
    tenant_id   VARCHAR(64)    NOT NULL,
    hour        BIGINT         NOT NULL,
    item_id     VARBINARY(512) NOT NULL,
    n           BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, hour, item_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Each item's most similar items, best first, as JSON `[[id, similarity], ...]`.
CREATE TABLE item_neighbours (
    tenant_id   VARCHAR(64)    NOT NULL,
    item_id     VARBINARY(512) NOT NULL,
    neighbours  LONGTEXT       NOT NULL,
    updated_at  BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, item_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Popular and trending items, of all items (`category` '') and of each category.
CREATE TABLE item_rankings (
    tenant_id   VARCHAR(64)    NOT NULL,
    kind        VARCHAR(16)    NOT NULL,
    category    VARBINARY(512) NOT NULL,
    ranking     LONGTEXT       NOT NULL,
    updated_at  BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, kind, category)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
