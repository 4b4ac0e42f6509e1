-- Who was erased, by a SHA-256 of their user id, and when: an event accepted before the erasure
-- and still on its way through the events topic is discarded by the processor instead of
-- bringing the person back.
CREATE TABLE erasures (
    tenant_id   VARCHAR(64)  NOT NULL,
    user_key    BINARY(32)   NOT NULL,
    erased_at   DATETIME(6)  NOT NULL,
    PRIMARY KEY (tenant_id, user_key)
) ENGINE = InnoDB;
