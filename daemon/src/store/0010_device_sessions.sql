-- Migration 10: an account has devices (up to 5), each with its own sessions (Sesame).

-- One Double Ratchet session record per (peer account, device of it); what was kept per
-- peer becomes the peer's device 1, the only device an account had before.
CREATE TABLE sessions_by_device (
    peer       TEXT NOT NULL,
    device     INTEGER NOT NULL,
    state      BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (peer, device)
) STRICT, WITHOUT ROWID;
INSERT INTO sessions_by_device (peer, device, state, updated_at)
    SELECT peer, 1, state, updated_at FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_by_device RENAME TO sessions;

-- A pairwise outbox row is sealed once per device of its recipient: `copies` holds the
-- (device, envelope) pairs (see `outbox::encode_copies`), and the row keeps its plaintext
-- until the relay took it, so a device the relay says is missing gets a new encryption
-- of it (the copies already made are never encrypted again). A row sealed before this
-- migration keeps its one `envelope`, the copy for device 1.
ALTER TABLE outbox ADD COLUMN copies BLOB;

-- The devices an account was last known to have, other than this one for our own
-- account (its devices get a "sent" copy of what this device sends): from the relay's
-- bundles and mismatch answers, forgotten when the relay says the list changed. No row:
-- not known.
CREATE TABLE device_lists (
    user_id    TEXT PRIMARY KEY NOT NULL,
    devices    TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
