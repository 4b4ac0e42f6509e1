-- People who saw both items, kept in both items' rows.
CREATE TABLE item_pairs (
    tenant_id   VARCHAR(64)    NOT NULL,
    item_id     VARBINARY(512) NOT NULL,
    partner_id  VARBINARY(512) NOT NULL,
    co          BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, item_id, partner_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
