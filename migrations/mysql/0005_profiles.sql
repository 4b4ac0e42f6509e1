-- Customer profiles (marketing automation): one row per person of a tenant, the profile as JSON
-- (traits, contact points, locale, time zone, consents). user_id is the application's own id.
CREATE TABLE profiles (
    tenant_id   VARCHAR(64)  NOT NULL,
    user_id     VARCHAR(255) NOT NULL,
    profile     LONGTEXT     NOT NULL,
    created_at  DATETIME(6)  NOT NULL,
    updated_at  DATETIME(6)  NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
