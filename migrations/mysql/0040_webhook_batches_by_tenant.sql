-- What an erasure needs to find the webhook batches that may hold events about a person's
-- messages: a tenant's batches by when they were written (no event about a message is older
-- than the message).
ALTER TABLE webhook_batches ADD KEY webhook_batches_by_tenant (tenant_id, created_at);
