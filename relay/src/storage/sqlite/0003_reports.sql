-- Migration 3: diagnostics reports (sent only with the user's consent) and in-app
-- feedback, kept for the operator for a limited time (`report_ttl_days`).

CREATE TABLE reports (
    id          TEXT PRIMARY KEY NOT NULL,      -- the device's id: a resend is stored once
    user_id     TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('diagnostics', 'feedback')),
    body        BLOB NOT NULL,                  -- JSON as the device sent it
    received_at INTEGER NOT NULL
) STRICT;
CREATE INDEX reports_by_time ON reports (received_at);
