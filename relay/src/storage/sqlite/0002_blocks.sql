-- Migration 2: blocking. `block_all` ("block everyone") refuses every incoming message
-- and hides presence from everyone; `blocks` refuses one sender and hides presence from
-- them. The device is the source of truth and replaces the whole set on every change.

ALTER TABLE accounts ADD COLUMN block_all INTEGER NOT NULL DEFAULT 0;

CREATE TABLE blocks (
    blocker TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    blocked TEXT NOT NULL,
    PRIMARY KEY (blocker, blocked)
) STRICT, WITHOUT ROWID;
