-- Migration 7: group state a device can check. `origin` (JSON) is how the group's admins
-- prove themselves to a device that has not seen the group: the creator, its identity
-- key and the nonce that hash to the group id, and each admin's chain of signed grants.
-- NULL for groups made before it (their admins cannot introduce them to new devices).
ALTER TABLE groups ADD COLUMN origin TEXT;

-- Sender keys that arrived before the membership update naming their sender (or before
-- the group itself): held, bounded, and stored as keys only once the sender is a member.
CREATE TABLE group_keys_held (
    group_id     TEXT NOT NULL,
    sender       TEXT NOT NULL,
    generation   INTEGER NOT NULL,
    distribution BLOB NOT NULL,
    at           INTEGER NOT NULL,
    PRIMARY KEY (group_id, sender, generation)
) STRICT, WITHOUT ROWID;
