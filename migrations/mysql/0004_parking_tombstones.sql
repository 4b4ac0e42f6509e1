-- A published parking is kept (published_at set, its claim token in claimed_by) until its message
-- moved on: a message whose republished copy never came back can then be parked again from it,
-- and `release` can tell the parking it published from a newer one of the same message (a re-park
-- clears published_at and claimed_by). One statement: applied whole or not at all.
ALTER TABLE deferred_messages
    ADD COLUMN published_at DATETIME(6) NULL,
    DROP KEY deferred_by_due,
    ADD KEY deferred_by_due (queue, published_at, due_at),
    ADD KEY deferred_by_published (published_at, due_at);
