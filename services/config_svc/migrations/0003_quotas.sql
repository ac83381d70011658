-- Contract §6: at most N messages per rolling minute, hour and day (NULL: no limit), counted by
-- the sender from the messages the server accepted.
ALTER TABLE accounts
    ADD COLUMN quota_per_minute integer CHECK (quota_per_minute > 0),
    ADD COLUMN quota_per_hour   integer CHECK (quota_per_hour > 0),
    ADD COLUMN quota_per_day    integer CHECK (quota_per_day > 0);
