-- Migration 4: what diagnostics reports are made of (kept on the device, sent only with
-- consent) and reports and feedback waiting for the relay.

-- Network-type changes (bounded: the newest 500).
CREATE TABLE network_history (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    type      TEXT NOT NULL,
    interface TEXT
) STRICT;

-- Relay connection events and errors (bounded: the newest 500).
CREATE TABLE connection_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    event  TEXT NOT NULL,
    detail TEXT
) STRICT;

-- Frontends that introduced themselves with system.hello.
CREATE TABLE frontends_seen (
    client     TEXT PRIMARY KEY NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
) STRICT;

-- Feedback (and reports) not yet accepted by the relay; `id` is the relay's dedupe key.
CREATE TABLE reports_out (
    id         TEXT PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('diagnostics', 'feedback')),
    body       BLOB NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
