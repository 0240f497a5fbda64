-- Migration 2: the account, contacts, end-to-end sessions, messages and the outbox.

-- This device's account; at most one row. `device_key` (Ed25519 seed) proves the device
-- to the relay; `identity` is the end-to-end identity key pair. Both are secrets, kept
-- only inside this encrypted database.
CREATE TABLE account (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    user_id       TEXT NOT NULL,
    email         TEXT NOT NULL,
    nickname      TEXT NOT NULL,
    avatar        BLOB,
    avatar_mime   TEXT,
    avatar_sha256 TEXT,
    created_at    INTEGER NOT NULL,
    device_key    BLOB NOT NULL,
    identity      BLOB NOT NULL,
    logged_in     INTEGER NOT NULL DEFAULT 1
) STRICT;

-- Our prekeys' secrets, by the id published in the relay's directory.
CREATE TABLE prekeys (
    id         INTEGER PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('signed', 'one_time', 'last_resort')),
    secret     BLOB NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE contacts (
    user_id       TEXT PRIMARY KEY NOT NULL,
    nickname      TEXT NOT NULL DEFAULT '',
    alias         TEXT,
    blocked       INTEGER NOT NULL DEFAULT 0,
    presence      TEXT NOT NULL DEFAULT 'offline',
    last_seen_at  INTEGER,
    identity      BLOB,
    verified      INTEGER NOT NULL DEFAULT 0,
    avatar_sha256 TEXT,
    added_at      INTEGER NOT NULL
) STRICT;

-- One Double Ratchet session per peer; replaced in the same transaction as the
-- ciphertext it produced or the plaintext it released.
CREATE TABLE sessions (
    peer       TEXT PRIMARY KEY NOT NULL,
    state      BLOB NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- Every message shown in a conversation. `id` is the local order; `message_id` is the
-- global ID (the sender's UUIDv7), the same on both devices.
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT NOT NULL UNIQUE,
    conversation  TEXT NOT NULL,
    sender        TEXT NOT NULL,
    direction     TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    kind          TEXT NOT NULL,
    body          TEXT,
    reply_to      TEXT,
    client_msg_id TEXT UNIQUE,
    created_at    INTEGER NOT NULL,
    received_at   INTEGER,
    state         TEXT NOT NULL,
    read          INTEGER NOT NULL DEFAULT 0,
    error         TEXT
) STRICT;
CREATE INDEX messages_conversation ON messages (conversation, id);

-- What must still reach the relay, in order. A row starts with its plaintext; the
-- sender encrypts it once, storing the ciphertext and the advanced ratchet in one
-- transaction, and from then on only that ciphertext is ever sent.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient  TEXT NOT NULL,
    message_id TEXT,
    plaintext  BLOB,
    envelope   BLOB,
    relay_id   TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX outbox_recipient ON outbox (recipient, seq);

-- Relay deliveries already applied, so a redelivery after a crash is acknowledged
-- without being shown twice.
CREATE TABLE received (
    sender   TEXT NOT NULL,
    relay_id TEXT NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (sender, relay_id)
) STRICT;
