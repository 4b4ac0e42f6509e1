-- What an erasure needs to find the webhook events about a person's messages (their tags,
-- metadata and provider details are redacted, see core/src/webhooks_erasure.rs): the per-event
-- rows by message.
ALTER TABLE webhook_deliveries ADD KEY webhook_deliveries_by_message (message_id);
