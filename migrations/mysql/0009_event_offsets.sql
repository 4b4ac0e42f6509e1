-- The event processor's position in each partition of the events topic, committed in the same
-- transaction as the state it produced: the truth after a crash or a rebalance (Kafka's own
-- committed offsets are only where to start reading).
CREATE TABLE event_offsets (
    consumer_group  VARCHAR(255) NOT NULL,
    topic           VARCHAR(249) NOT NULL,
    partition_id    INT          NOT NULL,
    next_offset     BIGINT       NOT NULL,
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
