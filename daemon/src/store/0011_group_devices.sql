-- Migration 11: group sender keys per device. Each device of an account has its own
-- sender key (two devices under one chain would reuse message keys), so a receiver keeps
-- one per (group, member, device), and a group message waits for the key of the device
-- that sent it. What was kept per member becomes the member's device 1, the only device
-- an account had before.

CREATE TABLE group_receivers_by_device (
    group_id   TEXT NOT NULL,
    sender     TEXT NOT NULL,
    device     INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    state      BLOB NOT NULL,
    PRIMARY KEY (group_id, sender, device, generation)
) STRICT, WITHOUT ROWID;
INSERT INTO group_receivers_by_device (group_id, sender, device, generation, state)
    SELECT group_id, sender, 1, generation, state FROM group_receivers;
DROP TABLE group_receivers;
ALTER TABLE group_receivers_by_device RENAME TO group_receivers;

CREATE TABLE group_keys_held_by_device (
    group_id     TEXT NOT NULL,
    sender       TEXT NOT NULL,
    device       INTEGER NOT NULL,
    generation   INTEGER NOT NULL,
    distribution BLOB NOT NULL,
    at           INTEGER NOT NULL,
    PRIMARY KEY (group_id, sender, device, generation)
) STRICT, WITHOUT ROWID;
INSERT INTO group_keys_held_by_device (group_id, sender, device, generation, distribution, at)
    SELECT group_id, sender, 1, generation, distribution, at FROM group_keys_held;
DROP TABLE group_keys_held;
ALTER TABLE group_keys_held_by_device RENAME TO group_keys_held;

ALTER TABLE group_pending ADD COLUMN device INTEGER NOT NULL DEFAULT 1;
-- The relay id it came as: what we name when asking its sender for it.
ALTER TABLE group_pending ADD COLUMN relay_id TEXT;

-- Content held for the user's acceptance of its sender's new key (a sender key) names
-- the device it came from.
ALTER TABLE held ADD COLUMN device INTEGER NOT NULL DEFAULT 1;

-- Asking a member for its sender key (outgoing = 1: we asked, naming one of its group
-- messages we could not read) and answering such a question (outgoing = 0: we sent our
-- key, and the message again, to the member who asked). Each relay id once per side,
-- and both bounded per (group, peer) over a window: a flood of questions costs nothing.
CREATE TABLE group_key_requests (
    group_id TEXT NOT NULL,
    peer     TEXT NOT NULL,
    relay_id TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (group_id, peer, relay_id, outgoing)
) STRICT, WITHOUT ROWID;
CREATE INDEX group_key_requests_at ON group_key_requests (at);
