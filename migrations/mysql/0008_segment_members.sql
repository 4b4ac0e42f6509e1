-- Who is in each segment, kept by the event processor in the transaction that changed it.
CREATE TABLE segment_members (
    tenant_id   VARCHAR(64)  NOT NULL,
    segment_id  VARCHAR(64)  NOT NULL,
    user_id     VARCHAR(255) NOT NULL,
    since       DATETIME(6)  NOT NULL,
    PRIMARY KEY (tenant_id, segment_id, user_id),
    KEY segment_members_person (tenant_id, user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
