-- Migration 3: groups with sender keys, per-member state of group messages, and group
-- messages waiting for the key or the membership news that lets them be read.

-- A group as this device knows it. `version` orders the admins' membership updates;
-- `sender_key` is our own Signal-style sender key for the group (secret), `key_stale`
-- says the membership changed since it was handed out, so the next send rotates it.
-- `member` is 0 once we left or were removed (the history stays).
CREATE TABLE groups (
    group_id   TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    member     INTEGER NOT NULL DEFAULT 1,
    sender_key BLOB,
    key_stale  INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    admin    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, user_id)
) STRICT, WITHOUT ROWID;

-- Other members' sender keys (secret), one per generation they distributed.
CREATE TABLE group_receivers (
    group_id   TEXT NOT NULL,
    sender     TEXT NOT NULL,
    generation INTEGER NOT NULL,
    state      BLOB NOT NULL,
    PRIMARY KEY (group_id, sender, generation)
) STRICT, WITHOUT ROWID;

-- Group messages that arrived before the sender's key or before the membership update
-- that names the sender: still ciphertext, retried when either arrives.
CREATE TABLE group_pending (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL,
    sender   TEXT NOT NULL,
    body     BLOB NOT NULL,
    at       INTEGER NOT NULL
) STRICT;
CREATE INDEX group_pending_by_group ON group_pending (group_id, sender, id);

-- Each member's state of our outgoing group messages.
CREATE TABLE message_members (
    message_id TEXT NOT NULL,
    member     TEXT NOT NULL,
    state      TEXT NOT NULL,
    error      TEXT,
    PRIMARY KEY (message_id, member)
) STRICT, WITHOUT ROWID;

-- A group message goes out once, to every recipient listed here (JSON array).
ALTER TABLE outbox ADD COLUMN fanout TEXT;
