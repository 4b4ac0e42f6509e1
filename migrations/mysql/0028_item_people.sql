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
