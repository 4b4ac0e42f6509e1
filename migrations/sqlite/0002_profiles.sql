-- Customer profiles (marketing automation), as in the cluster mode's MySQL.
CREATE TABLE profiles (
    tenant_id   TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    profile     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
