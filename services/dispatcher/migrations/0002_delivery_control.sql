-- Delivery control (contract §6): priority, a schedule, an expiry, and cancel.
ALTER TABLE deliveries
    ADD COLUMN priority        text        NOT NULL DEFAULT 'normal'
                                           CHECK (priority IN ('normal', 'high')),
    ADD COLUMN send_at         timestamptz,          -- fanned out at this time
    ADD COLUMN expires_at      timestamptz,          -- a recipient not sent by then is not sent
    ADD COLUMN fanned_out_at   timestamptz,          -- every job published; NULL: scheduled
    ADD COLUMN cancelled       integer     NOT NULL DEFAULT 0,
    ADD COLUMN cancelled_at    timestamptz,          -- the cancel committed
    ADD COLUMN cancelled_by    text,
    ADD COLUMN cancel_sent     integer,              -- recipients sent when the cancel committed
    ADD COLUMN cancel_count    integer,              -- recipients the cancel settled
    ADD COLUMN cancel_announced_at timestamptz;      -- delivery.cancelled published

-- The deliveries of the first version were fanned out when they were accepted.
UPDATE deliveries SET fanned_out_at = accepted_at WHERE accepted_at IS NOT NULL;

-- The schedule: what is due, found by an index that holds only what waits.
CREATE INDEX deliveries_due ON deliveries (send_at) WHERE fanned_out_at IS NULL;

-- scheduled: stored, waiting for send_at; cancelled: a cancel came before it was sent;
-- expired: not sent by expires_at.
ALTER TABLE delivery_recipients DROP CONSTRAINT delivery_recipients_state_check;
ALTER TABLE delivery_recipients ADD CONSTRAINT delivery_recipients_state_check
    CHECK (state IN ('new', 'scheduled', 'queued', 'deferred', 'sent', 'failed', 'unknown',
                     'cancelled', 'expired'));
