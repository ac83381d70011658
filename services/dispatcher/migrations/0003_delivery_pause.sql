-- Pausing one delivery: its jobs are taken out of the account's queue as they come up (the
-- sender sets their recipients back to `scheduled`) and fanned out again on resume.
ALTER TABLE deliveries ADD COLUMN paused_at timestamptz;
