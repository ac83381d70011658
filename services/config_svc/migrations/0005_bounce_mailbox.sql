-- Contract §6 (issue 15): an account's bounce mailbox, read by the sender (IMAP or POP3, its
-- own login, TLS as configured), and the optional VERP base address of its envelope sender.
ALTER TABLE accounts
    ADD COLUMN bounce_protocol     text CHECK (bounce_protocol IN ('imap', 'pop3')),
    ADD COLUMN bounce_host         text,
    ADD COLUMN bounce_port         integer,
    ADD COLUMN bounce_tls          text NOT NULL DEFAULT 'ssl'
                                   CHECK (bounce_tls IN ('none', 'starttls', 'ssl')),
    ADD COLUMN bounce_username     text,
    ADD COLUMN bounce_password_enc text,
    ADD COLUMN bounce_address      text,
    ADD COLUMN bounce_poll_s       integer NOT NULL DEFAULT 300;
