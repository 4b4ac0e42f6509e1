-- A person's record is stored in a compact binary form (`ump_core::person_codec`); records
-- written as JSON before stay readable.
ALTER TABLE person_state MODIFY record LONGBLOB NOT NULL;
