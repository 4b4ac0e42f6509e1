-- Recommendations' model, as in the cluster mode's MySQL (0027_item_changes.sql to 0032 there).
CREATE TABLE item_changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT    NOT NULL,
    changes     BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE item_people (
    tenant_id    TEXT    NOT NULL,
    item_id      TEXT    NOT NULL,
    people       INTEGER NOT NULL,
    stale_since  INTEGER NULL,
    changed_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, item_id)
);
CREATE INDEX item_people_stale ON item_people (stale_since) WHERE stale_since IS NOT NULL;

CREATE TABLE item_pairs (
    tenant_id   TEXT    NOT NULL,
    item_id     TEXT    NOT NULL,
    partner_id  TEXT    NOT NULL,
    co          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, item_id, partner_id)
);

CREATE TABLE item_hourly (
    tenant_id   TEXT    NOT NULL,
    hour        INTEGER NOT NULL,
    item_id     TEXT    NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, hour, item_id)
);

CREATE TABLE item_neighbours (
    tenant_id   TEXT    NOT NULL,
    item_id     TEXT    NOT NULL,
    neighbours  TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, item_id)
);

CREATE TABLE item_rankings (
    tenant_id   TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    category    TEXT    NOT NULL,
    ranking     TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kind, category)
);
