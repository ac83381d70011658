-- Deliveries: the content stored once; one row per recipient is the ledger the sender updates.
CREATE TABLE deliveries (
    delivery_id     text        PRIMARY KEY,
    request_sha256  bytea       NOT NULL,   -- a repeat with other bytes is a duplicate_delivery
    account_id      uuid        NOT NULL,
    requested_by    text,
    subject         text        NOT NULL,
    text_body       text,
    html_body       text,
    headers         jsonb       NOT NULL DEFAULT '{}',
    metadata        jsonb       NOT NULL DEFAULT '{}',
    total           integer     NOT NULL,
    sent            integer     NOT NULL DEFAULT 0,
    failed          integer     NOT NULL DEFAULT 0,
    unknown         integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    accepted_at     timestamptz,            -- every job confirmed and delivery.accepted sent
    completed_at    timestamptz             -- every recipient settled; delivery.completed sent
);
CREATE INDEX deliveries_requested_by ON deliveries (requested_by, created_at DESC);

CREATE TABLE delivery_recipients (
    delivery_id       text        NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    idx               integer     NOT NULL,
    email             text        NOT NULL,
    name              text,
    vars              jsonb       NOT NULL DEFAULT '{}',
    -- new: stored, job not yet confirmed by the broker; queued: job in the account's queue;
    -- then the sender's outcomes: deferred (will retry), sent, failed, unknown (ambiguous).
    state             text        NOT NULL DEFAULT 'new'
                                  CHECK (state IN ('new', 'queued', 'deferred', 'sent', 'failed',
                                                   'unknown')),
    attempts          integer     NOT NULL DEFAULT 0,
    last_smtp_code    integer,
    last_smtp_message text,
    message_id        text,
    queued_at         timestamptz,
    updated_at        timestamptz,
    PRIMARY KEY (delivery_id, idx)
);
CREATE INDEX delivery_recipients_state ON delivery_recipients (delivery_id, state);
