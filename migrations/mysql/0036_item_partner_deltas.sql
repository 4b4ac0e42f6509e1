-- Partner counts a take added to an item, not yet folded into its partner list: takes only
-- insert here (one row per item they touched), and the item's next neighbour-list rebuild folds
-- its rows into item_people.partners and deletes them, so an item's list is rewritten once per
-- rebuild rather than once per take.
CREATE TABLE item_partner_deltas (
    id         BIGINT         NOT NULL AUTO_INCREMENT,
    tenant_id  VARCHAR(64)    NOT NULL,
    item_id    VARBINARY(512) NOT NULL,
    added      MEDIUMBLOB     NOT NULL,
    PRIMARY KEY (tenant_id, item_id, id),
    KEY item_partner_deltas_id (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
