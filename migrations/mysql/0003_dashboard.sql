-- The dashboard's overview counts a tenant's messages of a time window by channel and status.
-- Ids are UUIDv7, so the window is an id range; with channel and status in the index the whole
-- count is read from the index alone, never from the rows. The index also serves everything
-- messages_by_tenant (tenant_id, id) served, as its prefix, so that one goes: the same number of
-- indexes to maintain on every write.
ALTER TABLE messages
    ADD KEY messages_by_time (tenant_id, id, channel, status),
    DROP KEY messages_by_tenant;
