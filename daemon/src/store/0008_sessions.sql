-- Migration 7: trust in identity keys, retry receipts and prekey upkeep.

-- The identity key this device knows for each peer (trust on first use). `changed_at`
-- is when it last changed; `untrusted` is set when it changed while the contact was
-- verified, and holds every message to the peer until the user accepts the new key
-- (`contacts.trust`).
CREATE TABLE identities (
    peer       TEXT PRIMARY KEY NOT NULL,
    identity   BLOB NOT NULL,
    changed_at INTEGER,
    untrusted  INTEGER NOT NULL DEFAULT 0
) STRICT;

-- `verified` belongs to the identity key that was verified: the key is kept beside it.
ALTER TABLE contacts ADD COLUMN verified_identity BLOB;

-- Plaintext of pairwise messages already sent, kept (encrypted at rest like the rest of
-- the database) for a bounded window so that a peer who could not open one can ask for
-- it again (a retry receipt naming `relay_id`): it is re-encrypted afresh under a new
-- session, never re-sent with an old message key. Deleted on the delivery receipt or
-- after the window.
CREATE TABLE resend (
    relay_id   TEXT PRIMARY KEY NOT NULL,
    recipient  TEXT NOT NULL,
    message_id TEXT,
    plaintext  BLOB NOT NULL,
    attempt    INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX resend_message ON resend (message_id);
CREATE INDEX resend_created ON resend (created_at);

-- How many times an outbox row's content was already re-sent after a retry receipt.
ALTER TABLE outbox ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;

-- Content that arrived from a peer whose new identity key the user has not accepted yet
-- and that would give it a role (a group sender key): applied on `contacts.trust`.
CREATE TABLE held (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    sender    TEXT NOT NULL,
    plaintext BLOB NOT NULL,
    at        INTEGER NOT NULL
) STRICT;
