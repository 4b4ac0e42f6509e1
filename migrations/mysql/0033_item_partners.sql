-- Each item's partners (the items seen with it, and by how many people), one `partner<TAB>count`
-- a line, at most ump_automation::recommend::KEEP_PARTNERS of them: one row per item to update
-- per take instead of a row per pair (migration 0029's table, carried over by 0034).
ALTER TABLE item_people ADD COLUMN partners MEDIUMBLOB NULL;
