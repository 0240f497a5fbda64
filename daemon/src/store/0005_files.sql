-- Migration 5: file transfers. One row per file message, in either direction. The file
-- key and the expected SHA-256 arrive inside the end-to-end message; the bytes live
-- encrypted (age STREAM) in `<data dir>/attachments/<message_id>.age`.
CREATE TABLE files (
    message_id TEXT PRIMARY KEY NOT NULL
               REFERENCES messages (message_id) ON DELETE CASCADE,
    direction  TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    -- The recipient of an outgoing file, the sender (the blob's owner) of an incoming one.
    peer       TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    mime       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    -- The 16-byte age file key: secret, kept only inside this encrypted database.
    file_key   BLOB NOT NULL,
    blob_id    BLOB NOT NULL,
    blob_size  INTEGER NOT NULL,
    -- Where the plaintext is readable on this device, if anywhere.
    path       TEXT,
    transfer   TEXT NOT NULL,
    -- Bytes of the blob moved so far (for progress and resume).
    bytes      INTEGER NOT NULL DEFAULT 0,
    -- The relay still holds our claim on the blob and must be told we are done with it.
    release    INTEGER NOT NULL DEFAULT 0,
    caption    TEXT,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX files_transfer ON files (transfer);
