-- One-click unsubscribe (RFC 8058). A campaign says what its links leave:
-- its lists (`list`, the default) or all mail (`global`, a suppression
-- with reason `unsubscribe`). A message that carries a link stores its
-- scope, so the worker adds the headers; NULL means no link (transactional
-- mail, unless the send asked for one).

-- When the member left the list through a link; the fan-out skips such
-- members, and importing the list again does not bring them back.
ALTER TABLE list_members ADD COLUMN unsubscribed_at timestamptz;

ALTER TABLE campaigns ADD COLUMN unsubscribe_scope text NOT NULL DEFAULT 'list'
    CHECK (unsubscribe_scope IN ('list', 'global'));

ALTER TABLE message_records ADD COLUMN unsubscribe_scope text
    CHECK (unsubscribe_scope IN ('list', 'global'));

-- message_events.event gains `unsubscribed`, written by the API (not a
-- trigger) in the transaction that unsubscribes, with the scope and the
-- address in `detail`.
