-- message_records_created_id_idx (created_at DESC, id DESC) serves every
-- query by creation time (a b-tree is read in either direction), so this
-- one only cost an extra index entry per insert and per status change.
DROP INDEX IF EXISTS message_records_created_at_idx;
