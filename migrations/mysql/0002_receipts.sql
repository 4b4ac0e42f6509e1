-- Delivery receipts find a message by the id its provider gave it (Twilio's SID, NHN's
-- requestId), always together with the provider's name.
ALTER TABLE messages ADD KEY messages_by_provider_message_id (provider_message_id, provider);
