-- The pair counts so far into each item's partner list: its largest (at most 200, and as many as
-- fit in 1,000 bytes, under MySQL 8's default group_concat_max_len of 1,024).
UPDATE item_people i
JOIN (
    SELECT tenant_id, item_id,
           GROUP_CONCAT(CONCAT(partner_id, CHAR(9), co) ORDER BY co DESC, partner_id SEPARATOR '\n')
               AS partners
    FROM (
        SELECT tenant_id, item_id, partner_id, co,
               ROW_NUMBER() OVER (PARTITION BY tenant_id, item_id ORDER BY co DESC, partner_id) AS r,
               SUM(LENGTH(partner_id) + 22)
                   OVER (PARTITION BY tenant_id, item_id ORDER BY co DESC, partner_id) AS bytes
        FROM item_pairs
    ) t
    WHERE t.r <= 200 AND t.bytes <= 1000
    GROUP BY tenant_id, item_id
) g ON g.tenant_id = i.tenant_id AND g.item_id = i.item_id
SET i.partners = g.partners;
