-- The pair counts so far, each item's 200 largest, into its partner list.
UPDATE item_people i SET partners = (
    SELECT GROUP_CONCAT(CONCAT(t.partner_id, CHAR(9), t.co) ORDER BY t.co DESC SEPARATOR '\n')
    FROM (
        SELECT tenant_id, item_id, partner_id, co,
               ROW_NUMBER() OVER (PARTITION BY tenant_id, item_id ORDER BY co DESC, partner_id) AS r
        FROM item_pairs
    ) t
    WHERE t.tenant_id = i.tenant_id AND t.item_id = i.item_id AND t.r <= 200
);
