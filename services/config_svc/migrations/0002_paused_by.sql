-- Who paused an account: an operator (only an operator's resume ends it) or the sender (an
-- account fault, which a change of the account or an operator's resume ends).
ALTER TABLE accounts ADD COLUMN paused_by text CHECK (paused_by IN ('operator', 'sender'));
UPDATE accounts SET paused_by = 'operator' WHERE paused;
