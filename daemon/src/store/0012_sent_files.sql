-- Migration 12: sent copies of files (linked devices). A file another device of our
-- account sent is shown here as outgoing, and fetched like an incoming file: this device
-- never uploads it, and never cancels or deletes its blob on the relay (`remote` = 1).
ALTER TABLE files ADD COLUMN remote INTEGER NOT NULL DEFAULT 0;

-- A release owed for a blob this device uploaded is a cancel (the owner deletes it);
-- any other only takes this device off the devices the blob waits for. Until now every
-- release owed for a blob of our own was a cancel.
ALTER TABLE blob_releases ADD COLUMN cancel INTEGER NOT NULL DEFAULT 0;
UPDATE blob_releases SET cancel = 1 WHERE owner = (SELECT user_id FROM account WHERE id = 1);
