-- Journeys, as in the cluster mode's MySQL.
CREATE TABLE journeys (
    tenant_id        TEXT    NOT NULL,
    journey_id       TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    current_version  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, journey_id)
);

CREATE TABLE journey_versions (
    tenant_id   TEXT    NOT NULL,
    journey_id  TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    definition  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, journey_id, version)
);

CREATE TABLE journey_caps (
    tenant_id   TEXT    NOT NULL PRIMARY KEY,
    caps        TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE journey_stats (
    tenant_id   TEXT    NOT NULL,
    journey_id  TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    step        TEXT    NOT NULL,
    counter     TEXT    NOT NULL,
    value       INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, journey_id, version, step, counter)
);

CREATE TABLE journey_sends (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id    TEXT    NOT NULL,
    user_id      TEXT    NOT NULL,
    send         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    owner        TEXT    NULL,
    lease_until  INTEGER NULL
);
