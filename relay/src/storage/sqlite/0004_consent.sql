-- Migration 4: presence needs consent, fair mailbox shares, minimal dedupe records.

-- `settings.share_presence` of the account's device; contacts are the device's contact
-- list, replaced whole on every change. Presence goes only to contacts not blocked.
ALTER TABLE accounts ADD COLUMN share_presence INTEGER NOT NULL DEFAULT 1;
CREATE TABLE contacts (
    owner TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    contact TEXT NOT NULL,
    PRIMARY KEY (owner, contact)
) STRICT, WITHOUT ROWID;

-- Whether the sender was a contact of the recipient when the message was accepted:
-- non-contacts together may fill only their share of a mailbox.
ALTER TABLE mailbox ADD COLUMN from_contact INTEGER NOT NULL DEFAULT 1;
CREATE INDEX mailbox_by_sender ON mailbox (recipient, sender);
CREATE INDEX mailbox_from_sender ON mailbox (sender);

-- Idempotency keeps only what de-duplication needs: a hash of (sender, recipient, msg
-- id), no user ids, for the retransmit window only (one hour, as in the cluster).
DROP TABLE sent_ids;
CREATE TABLE sent_ids (
    id BLOB PRIMARY KEY NOT NULL,
    server_ts INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX sent_ids_by_time ON sent_ids (server_ts);

CREATE INDEX reports_by_user ON reports (user_id);
