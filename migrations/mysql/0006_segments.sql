-- Segments (marketing automation): tenant data, one row per segment, its definition as JSON (the
-- shape of `ump_automation::segment::Segment`).
CREATE TABLE segments (
    tenant_id   VARCHAR(64)  NOT NULL,
    segment_id  VARCHAR(64)  NOT NULL,
    definition  LONGTEXT     NOT NULL,
    created_at  DATETIME(6)  NOT NULL,
    updated_at  DATETIME(6)  NOT NULL,
    PRIMARY KEY (tenant_id, segment_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
