-- Migration 5: linked devices. An account has up to five devices, each with its own
-- Ed25519 key, sealed name, prekeys and mailbox; the identity key stays the account's.
-- An existing account's device becomes its device 1, with its keys and its mail.

-- The next device id of the account: ids are never reused within an account, so a
-- removed device's id can never name a newer one (its sessions, its mailbox).
ALTER TABLE accounts ADD COLUMN next_device INTEGER NOT NULL DEFAULT 1;

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL,
    device_key BLOB NOT NULL,                   -- Ed25519 public key
    name BLOB NOT NULL DEFAULT x'',             -- sealed by the account's devices
    linked_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL DEFAULT 0,
    signed_prekey_id INTEGER,
    signed_prekey BLOB,
    last_resort_id INTEGER,
    last_resort BLOB,
    PRIMARY KEY (user_id, device_id)
) STRICT;
CREATE INDEX devices_by_key ON devices (device_key);

INSERT INTO devices (user_id, device_id, device_key, linked_at, last_seen_at,
                     signed_prekey_id, signed_prekey, last_resort_id, last_resort)
SELECT user_id, 1, device_key, created_at, last_seen_at,
       signed_prekey_id, signed_prekey, last_resort_id, last_resort
FROM accounts WHERE device_key IS NOT NULL;
-- Device 1 existed (or may have, for a logged-out account): the next one is 2.
UPDATE accounts SET next_device = 2;

-- One-time prekeys per device.
CREATE TABLE device_prekeys (
    user_id TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    key BLOB NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) STRICT;
INSERT INTO device_prekeys (user_id, device_id, key_id, key)
SELECT p.user_id, 1, p.key_id, p.key FROM one_time_prekeys p
WHERE EXISTS (SELECT 1 FROM devices d WHERE d.user_id = p.user_id AND d.device_id = 1);
DROP TABLE one_time_prekeys;

-- The device's keys moved to `devices`; the columns go rather than linger unused.
ALTER TABLE accounts DROP COLUMN device_key;
ALTER TABLE accounts DROP COLUMN signed_prekey_id;
ALTER TABLE accounts DROP COLUMN signed_prekey;
ALTER TABLE accounts DROP COLUMN last_resort_id;
ALTER TABLE accounts DROP COLUMN last_resort;

-- Every message is for one device of the recipient, and tells the sender's device.
-- Queued mail becomes device 1's; mail of an account without a device has nobody left
-- to read it.
ALTER TABLE mailbox ADD COLUMN device_id INTEGER NOT NULL DEFAULT 1;
ALTER TABLE mailbox ADD COLUMN sender_device INTEGER NOT NULL DEFAULT 1;
DELETE FROM mailbox WHERE NOT EXISTS
    (SELECT 1 FROM devices d WHERE d.user_id = mailbox.recipient AND d.device_id = 1);
DROP INDEX mailbox_by_recipient;
DROP INDEX mailbox_by_sender;
CREATE INDEX mailbox_by_device ON mailbox (recipient, device_id, delivery_id);
CREATE INDEX mailbox_by_device_sender ON mailbox (recipient, device_id, sender);

-- Link rendezvous: the opening account's first message, the joining device's message
-- and the account's reply, each written once, gone at `expires_at` (ten minutes).
-- One per account (UNIQUE): a new one replaces the old.
CREATE TABLE link_slots (
    slot BLOB PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL UNIQUE REFERENCES accounts (user_id) ON DELETE CASCADE,
    hello BLOB NOT NULL,
    joined BLOB,
    reply BLOB,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX link_slots_by_expiry ON link_slots (expires_at);
