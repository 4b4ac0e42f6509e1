-- What an erasure needs to find the webhook events about a person's messages (their tags,
-- metadata and provider details are redacted, see core/src/webhooks_erasure.rs).
CREATE INDEX webhook_deliveries_by_message ON webhook_deliveries (message_id);
