-- Segment sizes over time, as in the cluster mode's MySQL (`at` in whole minutes, as micros).
CREATE TABLE segment_sizes (
    tenant_id   TEXT    NOT NULL,
    segment_id  TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, segment_id, at)
);
