-- The tags and metadata a delivery receipt's webhook event carries (a receipt arrives without
-- them), kept with the message's own row: JSON {"tags": [...], "metadata": {...}}, set only for
-- sent messages with labels of tenants with an endpoint subscribed to receipts, NULL otherwise.
-- Before, they were a row of their own in `webhook_messages`; that table is still read for
-- messages sent before this column existed.
ALTER TABLE messages ADD COLUMN webhook_labels TEXT NULL;
