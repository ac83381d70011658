-- The suppression list (contract §6): addresses not sent to any more, after a hard bounce, a
-- complaint, soft bounces beyond a count, or by hand. One row an address, matched without
-- regard to case.
CREATE TABLE suppressions (
    email_key   text        PRIMARY KEY,          -- lower(email)
    email       text        NOT NULL,
    reason      text        NOT NULL CHECK (reason IN ('hard', 'soft', 'complaint', 'manual')),
    source      text        NOT NULL,             -- bounce, complaint, a user's sub, ...
    detail      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX suppressions_by_time ON suppressions (created_at DESC);

-- A delivery's suppressed recipients: stored, never sent nor failed, counted in its total.
ALTER TABLE deliveries ADD COLUMN suppressed integer NOT NULL DEFAULT 0;

ALTER TABLE delivery_recipients DROP CONSTRAINT delivery_recipients_state_check;
ALTER TABLE delivery_recipients ADD CONSTRAINT delivery_recipients_state_check
    CHECK (state IN ('new', 'scheduled', 'queued', 'deferred', 'sent', 'failed', 'unknown',
                     'cancelled', 'expired', 'suppressed', 'bounced'));
