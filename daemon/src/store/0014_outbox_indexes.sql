-- Migration 14: the outbox's two partial indexes.
--
-- The rows of a recipient still in plaintext (`outbox::unsealed`, `outbox::unsealed_due`)
-- are the newest of its queue. Through `outbox_recipient` the search for them read every
-- sealed row queued before them: under a steady flow to one peer, thousands of rows at
-- every commit. The plaintext rows have an index of their own; it is empty nearly all
-- the time, as a message is sealed in the transaction that accepts it.
CREATE INDEX outbox_unsealed ON outbox (recipient, seq) WHERE envelope IS NULL AND copies IS NULL;

-- The rows that wait before they are sent (`outbox::next_due`): delivery receipts
-- gathering others, a handful at most, looked for after every drain.
CREATE INDEX outbox_waiting ON outbox (not_before) WHERE not_before IS NOT NULL;
