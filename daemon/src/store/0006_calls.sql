-- Migration 6: calls and the call log. `call_key` (the call's media key) is a secret,
-- kept only while the call may still carry media and cleared when it ends.
CREATE TABLE calls (
    call_id     TEXT PRIMARY KEY NOT NULL,
    peer        TEXT NOT NULL,
    direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    media       TEXT NOT NULL CHECK (media IN ('audio', 'video')),
    state       TEXT NOT NULL CHECK (state IN ('ringing', 'active', 'ended')),
    started_at  INTEGER NOT NULL,
    answered_at INTEGER,
    ended_at    INTEGER,
    end_reason  TEXT,
    call_key    BLOB
) STRICT;
CREATE INDEX calls_started ON calls (started_at);
CREATE INDEX calls_live ON calls (state) WHERE state != 'ended';
