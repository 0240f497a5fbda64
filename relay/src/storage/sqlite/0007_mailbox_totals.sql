-- Migration 7: the mailbox counters are written by the relay, not by triggers, and each
-- device mailbox gets a totals row.
--
-- The triggers of migration 6 ran once per mailbox row: every acknowledged (deleted)
-- message updated its usage row and tried to delete it. Now the relay's code moves the
-- counters once per (device mailbox, sender, from a contact) per write (a batch of
-- sends and acknowledgements, an expiry sweep, a device's or an account's removal), in
-- the same transaction as the mail (`counters.rs`). The update guard stays.

DROP TRIGGER mailbox_usage_insert;
DROP TRIGGER mailbox_usage_delete;

-- Only the quota scans of before read the mailbox by (device, sender): every insert and
-- every delete paid for keeping this index, which nothing reads any more.
DROP INDEX mailbox_by_device_sender;

-- What each device mailbox holds in all, and from non-contacts: the total and the
-- strangers' part of a quota check are this one row, not a sum over one row per sender.
-- A row that reaches zero messages goes.
CREATE TABLE mailbox_totals (
    recipient TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    messages INTEGER NOT NULL,
    bytes INTEGER NOT NULL,                     -- SUM(length(body))
    stranger_messages INTEGER NOT NULL,         -- from_contact = 0
    stranger_bytes INTEGER NOT NULL,
    PRIMARY KEY (recipient, device_id)
) STRICT, WITHOUT ROWID;

-- Both counted again from the mailbox: exact after the upgrade whatever they held.
DELETE FROM mailbox_usage;
INSERT INTO mailbox_usage (recipient, device_id, sender, from_contact, messages, bytes)
SELECT recipient, device_id, sender, from_contact, COUNT(*), SUM(length(body))
FROM mailbox GROUP BY recipient, device_id, sender, from_contact;

INSERT INTO mailbox_totals (recipient, device_id, messages, bytes, stranger_messages,
                            stranger_bytes)
SELECT recipient, device_id, COUNT(*), SUM(length(body)), SUM(from_contact = 0),
       SUM(CASE WHEN from_contact = 0 THEN length(body) ELSE 0 END)
FROM mailbox GROUP BY recipient, device_id;

-- Deleting an account would cascade to the mail queued for it, behind the counters'
-- back: the relay deletes that mail (and its counters) first, and an account that still
-- has mail cannot be deleted.
CREATE TRIGGER accounts_delete_mail_first
BEFORE DELETE ON accounts
WHEN EXISTS (SELECT 1 FROM mailbox WHERE recipient = OLD.user_id) BEGIN
    SELECT RAISE(ABORT, 'mail queued for an account is counted: delete it first');
END;
