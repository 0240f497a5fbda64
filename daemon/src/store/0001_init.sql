-- Migration 1: the foundation. Settings, the persisted event log and daemon metadata.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) STRICT;

-- Every event a UI may need to hear about, written in the same transaction as the
-- change it describes. AUTOINCREMENT: a seq is never reused, even after pruning, so a
-- client's `since` can never silently point at a different event.
CREATE TABLE events (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    at   INTEGER NOT NULL,
    body TEXT NOT NULL
) STRICT;
CREATE INDEX events_at ON events (at);
