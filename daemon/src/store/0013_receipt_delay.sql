-- Migration 13: an outbox row may wait before it is sent. A delivery receipt waits a
-- moment (`outbox::RECEIPT_DELAY_MS`) so that the receipts for the messages arriving
-- meanwhile merge into it: one sealed receipt, one relay request and one transaction on
-- the peer's device for many messages, instead of one each. NULL: send at once. A row
-- that waits still goes out at once with any row after it that does not.
ALTER TABLE outbox ADD COLUMN not_before INTEGER;
