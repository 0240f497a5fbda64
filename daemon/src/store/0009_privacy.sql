-- Migration 7: the privacy policy kept to the letter.

-- A relay account that "restore defaults" could not delete because the relay was
-- unreachable: the least that authenticates that one deletion (the user id and the
-- device's Ed25519 seed, a secret kept only inside this encrypted database). The row is
-- deleted (and so zeroed, secure_delete) once the relay has deleted the account.
CREATE TABLE relay_deletions (
    user_id    TEXT PRIMARY KEY NOT NULL,
    device_key BLOB NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- Blobs of deleted file messages that the relay must still be told to release (the
-- owner deletes it, a recipient drops its claim); removed once the relay answered.
CREATE TABLE blob_releases (
    owner   TEXT NOT NULL,
    blob_id BLOB NOT NULL,
    PRIMARY KEY (owner, blob_id)
) STRICT, WITHOUT ROWID;

-- Muted conversations: they raise no `notification` events.
CREATE TABLE muted (
    conversation TEXT PRIMARY KEY NOT NULL
) STRICT;

-- The cellular generation (2g..5g) of a cellular network, when it was known.
ALTER TABLE network_history ADD COLUMN technology TEXT;
