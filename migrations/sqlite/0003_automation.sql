-- Marketing automation, as in the cluster mode's MySQL, plus the event log (Kafka's topic there).
CREATE TABLE segments (
    tenant_id   TEXT    NOT NULL,
    segment_id  TEXT    NOT NULL,
    definition  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, segment_id)
);

CREATE TABLE person_state (
    tenant_id   TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    record      TEXT    NOT NULL,
    next_wake   INTEGER NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX person_state_wake ON person_state (next_wake) WHERE next_wake IS NOT NULL;

CREATE TABLE segment_members (
    tenant_id   TEXT    NOT NULL,
    segment_id  TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    since       INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, segment_id, user_id)
);
CREATE INDEX segment_members_person ON segment_members (tenant_id, user_id);

-- Accepted events, in order, until the processor has folded them in (and deletes them in the
-- same transaction).
CREATE TABLE event_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT    NOT NULL,
    entry       TEXT    NOT NULL
);
