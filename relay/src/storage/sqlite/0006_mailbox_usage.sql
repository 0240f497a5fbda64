-- Migration 6: what each device mailbox holds, counted as it changes. The quota checks
-- of every enqueue (the device's total, one sender's share, the strangers' share) read
-- these counters instead of aggregating the mailbox, which cost a scan of the device's
-- whole mailbox per copy (quadratic while an offline device's mailbox fills).
--
-- One row per (device mailbox, sender, whether the sender was a contact): a device's
-- total is the sum of its few rows, one sender's share one or two rows, the strangers'
-- share the rows with from_contact = 0. A row that reaches zero messages goes.

CREATE TABLE mailbox_usage (
    recipient TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    sender TEXT NOT NULL,
    from_contact INTEGER NOT NULL,
    messages INTEGER NOT NULL,
    bytes INTEGER NOT NULL,                     -- SUM(length(body))
    PRIMARY KEY (recipient, device_id, sender, from_contact)
) STRICT, WITHOUT ROWID;

INSERT INTO mailbox_usage (recipient, device_id, sender, from_contact, messages, bytes)
SELECT recipient, device_id, sender, from_contact, COUNT(*), SUM(length(body))
FROM mailbox GROUP BY recipient, device_id, sender, from_contact;

-- Kept exact by triggers, so that no path that writes the mailbox (enqueue, fan-out,
-- acknowledgement, expiry, device removal, the account's deletion and its cascade, a
-- future one) can forget them. They run inside the statement's transaction and
-- savepoint: a refused or rolled-back write rolls its counts back with it.
CREATE TRIGGER mailbox_usage_insert AFTER INSERT ON mailbox BEGIN
    INSERT INTO mailbox_usage (recipient, device_id, sender, from_contact, messages, bytes)
    VALUES (NEW.recipient, NEW.device_id, NEW.sender, NEW.from_contact, 1, length(NEW.body))
    ON CONFLICT (recipient, device_id, sender, from_contact)
    DO UPDATE SET messages = messages + 1, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER mailbox_usage_delete AFTER DELETE ON mailbox BEGIN
    UPDATE mailbox_usage SET messages = messages - 1, bytes = bytes - length(OLD.body)
    WHERE recipient = OLD.recipient AND device_id = OLD.device_id AND sender = OLD.sender
      AND from_contact = OLD.from_contact;
    DELETE FROM mailbox_usage
    WHERE recipient = OLD.recipient AND device_id = OLD.device_id AND sender = OLD.sender
      AND from_contact = OLD.from_contact AND messages <= 0;
END;

-- A queued message is never changed in what the counters count (nothing updates one):
-- should a future path try, it fails loudly instead of leaving the counters wrong.
CREATE TRIGGER mailbox_usage_update
BEFORE UPDATE OF recipient, device_id, sender, from_contact, body ON mailbox BEGIN
    SELECT RAISE(ABORT, 'mailbox rows are counted in mailbox_usage: delete and insert');
END;
