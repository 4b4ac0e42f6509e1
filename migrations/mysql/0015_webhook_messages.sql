-- Tags and metadata of sent messages of tenants with webhook endpoints: a delivery receipt
-- (`delivered`, or `failed` after all) arrives without them, and its event carries them.
CREATE TABLE webhook_messages (
    message_id  BINARY(16)  NOT NULL,
    tags        TEXT        NOT NULL,
    metadata    MEDIUMTEXT  NOT NULL,
    PRIMARY KEY (message_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
