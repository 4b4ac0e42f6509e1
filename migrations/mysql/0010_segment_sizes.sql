-- Segment sizes over time: one sample a minute per segment (the dashboard's chart). Processors
-- sample independently; the key collapses their samples of one minute into one row.
CREATE TABLE segment_sizes (
    tenant_id   VARCHAR(64)  NOT NULL,
    segment_id  VARCHAR(64)  NOT NULL,
    at          DATETIME     NOT NULL,
    size        BIGINT       NOT NULL,
    PRIMARY KEY (tenant_id, segment_id, at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
