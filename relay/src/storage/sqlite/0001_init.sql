-- The relay's embedded storage, version 1. It holds no plaintext: message bodies are
-- end-to-end ciphertext, passwords are Argon2id hashes, keys are public keys.

CREATE TABLE accounts (
    user_id TEXT PRIMARY KEY NOT NULL,          -- lowercased
    password_hash TEXT NOT NULL,                -- Argon2id PHC string
    email TEXT NOT NULL,
    nickname TEXT NOT NULL,
    device_key BLOB,                            -- Ed25519 public key; NULL when logged out
    identity BLOB NOT NULL DEFAULT x'',         -- opaque identity-key bytes from the device
    signed_prekey_id INTEGER,
    signed_prekey BLOB,
    last_resort_id INTEGER,
    last_resort BLOB,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE avatars (
    user_id TEXT PRIMARY KEY NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    mime TEXT NOT NULL,
    sha256 BLOB NOT NULL,
    data BLOB NOT NULL
) STRICT;

CREATE TABLE one_time_prekeys (
    user_id TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    key_id INTEGER NOT NULL,
    key BLOB NOT NULL,
    PRIMARY KEY (user_id, key_id)
) STRICT;

-- Who watches whose presence and profile.
CREATE TABLE watches (
    watcher TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    watched TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    PRIMARY KEY (watcher, watched)
) STRICT;
CREATE INDEX watches_by_watched ON watches (watched);

-- Undelivered messages, deleted on acknowledgement or expiry. AUTOINCREMENT: a delivery
-- id is never reused, so a late ack can never delete a newer message.
CREATE TABLE mailbox (
    delivery_id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    sender TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    server_ts INTEGER NOT NULL,
    body BLOB NOT NULL
) STRICT;
CREATE INDEX mailbox_by_recipient ON mailbox (recipient, delivery_id);
CREATE INDEX mailbox_by_time ON mailbox (server_ts);

-- Idempotency: which (sender, recipient, msg_id) were accepted, kept as long as messages
-- live so a retransmit after delivery is acknowledged again instead of stored twice.
CREATE TABLE sent_ids (
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    server_ts INTEGER NOT NULL,
    PRIMARY KEY (sender, recipient, msg_id)
) STRICT;
CREATE INDEX sent_ids_by_time ON sent_ids (server_ts);
