-- Who was erased, by a SHA-256 of their user id, and when: an event accepted before the erasure
-- and still in the event log is discarded by the processor instead of bringing the person back.
CREATE TABLE erasures (
    tenant_id   TEXT    NOT NULL,
    user_key    BLOB    NOT NULL,
    erased_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_key)
);
