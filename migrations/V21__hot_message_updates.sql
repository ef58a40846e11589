-- The send path's two updates of a message (claimed, then sent) become
-- heap-only (HOT) updates: the new row version goes on the same page and
-- no index gets a new entry.
--
-- PostgreSQL makes an update HOT only when no column of any index (key,
-- expression or partial predicate) changes, and the page has room. Status
-- was in three indexes (`message_records_status_idx`, the scheduled
-- messages' predicate, the campaign runs' index), so each status change
-- wrote an entry into every index of the table: ten index entries per
-- email for the two updates, a fifth of the WAL of an email end to end.
--
-- What those indexes found is now found through `live_messages`: one row
-- per message not yet final (scheduled, queued, sending), written by the
-- triggers below in the statement that changes the message, so no path
-- can forget it. A message leaves it when it becomes final (one index
-- probe and a dead tuple instead of five index entries). The reconciler
-- and `celery inspect scheduled` read the live messages from it, and the
-- scheduler the scheduled ones by `release_at`.
--
-- Lock order: a statement changes the message row first and its
-- `live_messages` row in the trigger after; readers lock message rows
-- (`FOR UPDATE SKIP LOCKED` on message_records) and never live rows, so
-- the two cannot deadlock.
--
-- Listing messages by status now reads the creation index and filters
-- (newest first, as the list is ordered): quick for common statuses, a
-- longer scan for a rare one over a large table.

CREATE TABLE live_messages (
    id          uuid PRIMARY KEY,
    -- A scheduled message's send_at; NULL once released (or not scheduled).
    release_at  timestamptz
);

CREATE INDEX live_messages_release_idx ON live_messages (release_at)
    WHERE release_at IS NOT NULL;

INSERT INTO live_messages (id, release_at)
SELECT id, CASE WHEN status = 'scheduled' THEN send_at END
  FROM message_records
 WHERE status IN ('scheduled', 'queued', 'sending');

CREATE FUNCTION live_messages_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO live_messages (id, release_at)
    SELECT n.id, CASE WHEN n.status = 'scheduled' THEN n.send_at END
      FROM new_rows n
     WHERE n.status IN ('scheduled', 'queued', 'sending');
    RETURN NULL;
END
$$;

-- By primary key through arrays, never a join: the transition tables have
-- no statistics (see V10 on joins planned for a small table).
CREATE FUNCTION live_messages_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Final now (or again): out.
    DELETE FROM live_messages
     WHERE id = ANY (ARRAY(SELECT n.id FROM new_rows n
                            WHERE n.status NOT IN ('scheduled', 'queued', 'sending')));
    -- Scheduled or queued: in, with its release time. A message becomes
    -- `sending` only from `queued` or `sending`, so it is already in; the
    -- claim, the hot path's first update, writes nothing here.
    INSERT INTO live_messages (id, release_at)
    SELECT n.id, CASE WHEN n.status = 'scheduled' THEN n.send_at END
      FROM new_rows n
     WHERE n.status IN ('scheduled', 'queued')
    ON CONFLICT (id) DO UPDATE SET release_at = EXCLUDED.release_at
     WHERE live_messages.release_at IS DISTINCT FROM EXCLUDED.release_at;
    RETURN NULL;
END
$$;

CREATE FUNCTION live_messages_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM live_messages
     WHERE id = ANY (ARRAY(SELECT o.id FROM old_rows o
                            WHERE o.status IN ('scheduled', 'queued', 'sending')));
    RETURN NULL;
END
$$;

CREATE TRIGGER message_records_live_insert
    AFTER INSERT ON message_records REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION live_messages_on_insert();

CREATE TRIGGER message_records_live_update
    AFTER UPDATE ON message_records REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION live_messages_on_update();

CREATE TRIGGER message_records_live_delete
    AFTER DELETE ON message_records REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION live_messages_on_delete();

-- Status leaves every index.
DROP INDEX message_records_status_idx;
DROP INDEX message_records_scheduled_idx;
DROP INDEX message_records_campaign_run_idx;
CREATE INDEX message_records_campaign_run_idx ON message_records (campaign_run_id)
    WHERE campaign_run_id IS NOT NULL;

-- Room on each page for a message's next versions: an update is HOT only
-- if the new version fits on the same page. A message is updated twice on
-- its way out; 70% leaves room for both on the pages the API fills.
ALTER TABLE message_records SET (fillfactor = 70);
