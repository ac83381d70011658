-- The bounce mailboxes' readers (issue 15): one replica reads a mailbox at a time (a lease,
-- as for sending), and each message read is remembered, in the same transaction as its
-- effect, by the mailbox's own id for it: a message read but not yet removed (a reader
-- killed before the expunge or the QUIT) is removed next time, never read twice.
CREATE TABLE bounce_mailbox_leases (
    mailbox     text        PRIMARY KEY,  -- protocol://user@host:port, never a password
    owner       text        NOT NULL,
    lease_until timestamptz NOT NULL
);

CREATE TABLE bounce_messages (
    mailbox    text        NOT NULL,
    uid        text        NOT NULL,      -- IMAP UIDVALIDITY:UID, or the POP3 UIDL
    report     text        NOT NULL,      -- dsn, complaint, plain, autoreply, unknown
    removed    boolean     NOT NULL,      -- false: left in the mailbox (not a bounce)
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mailbox, uid)
);

-- At most one account.warning an hour per account for its policy bounces.
CREATE TABLE bounce_policy_warnings (
    account_id uuid        PRIMARY KEY,
    warned_at  timestamptz NOT NULL
);

