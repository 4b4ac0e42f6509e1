-- Each item's partners in its own row instead of a row per pair, as in the cluster mode's MySQL
-- (0033_item_partners.sql to 0035 there): one `partner<TAB>count` a line, the 200 largest.
ALTER TABLE item_people ADD COLUMN partners TEXT NULL;

UPDATE item_people SET partners = (
    SELECT group_concat(t.partner_id || char(9) || t.co, char(10))
    FROM (
        SELECT tenant_id, item_id, partner_id, co,
               row_number() OVER (PARTITION BY tenant_id, item_id ORDER BY co DESC, partner_id) AS r
        FROM item_pairs
    ) t
    WHERE t.tenant_id = item_people.tenant_id AND t.item_id = item_people.item_id AND t.r <= 200
);

DROP TABLE IF EXISTS item_pairs;

-- Partner counts a take added to an item, folded into its list by the next rebuild (0036 in MySQL).
CREATE TABLE item_partner_deltas (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT    NOT NULL,
    item_id    TEXT    NOT NULL,
    added      TEXT    NOT NULL
);
CREATE INDEX item_partner_deltas_item ON item_partner_deltas (tenant_id, item_id, id);
