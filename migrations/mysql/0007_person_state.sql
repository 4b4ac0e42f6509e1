-- What the event processor keeps of each person (`ump_automation::person::PersonRecord` as JSON:
-- event counters in their windows, segments, recent events) and when to look at them again.
CREATE TABLE person_state (
    tenant_id   VARCHAR(64)  NOT NULL,
    user_id     VARCHAR(255) NOT NULL,
    record      LONGTEXT     NOT NULL,
    next_wake   DATETIME(6)  NULL,
    updated_at  DATETIME(6)  NOT NULL,
    PRIMARY KEY (tenant_id, user_id),
    KEY person_state_wake (next_wake)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
