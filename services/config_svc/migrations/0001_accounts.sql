-- Mail accounts: the seed's registration form. Passwords are stored encrypted (Fernet tokens).
CREATE TABLE accounts (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text        NOT NULL,
    personal            boolean     NOT NULL DEFAULT false,
    owner               text,
    from_address        text        NOT NULL,
    from_name           text,
    reply_to            text,
    smtp_host           text        NOT NULL,
    smtp_port           integer     NOT NULL CHECK (smtp_port BETWEEN 1 AND 65535),
    smtp_auth           boolean     NOT NULL DEFAULT false,
    smtp_username       text,
    smtp_password_enc   text,
    pop_before_smtp     boolean     NOT NULL DEFAULT false,
    pop_host            text,
    pop_port            integer     CHECK (pop_port BETWEEN 1 AND 65535),
    pop_username        text,
    pop_password_enc    text,
    tls                 text        NOT NULL DEFAULT 'starttls'
                                    CHECK (tls IN ('none', 'starttls', 'ssl')),
    local_hostname      text,
    send_interval_ms    integer     NOT NULL DEFAULT 0
                                    CHECK (send_interval_ms BETWEEN 0 AND 1500000),
    is_default          boolean     NOT NULL DEFAULT false,
    paused              boolean     NOT NULL DEFAULT false,
    created_by          text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_by          text,
    updated_at          timestamptz,
    deleted_at          timestamptz,
    CHECK (NOT personal OR owner IS NOT NULL)
);

-- Names are unique among live accounts; a deleted account's name may be used again.
CREATE UNIQUE INDEX accounts_name_key ON accounts (lower(name)) WHERE deleted_at IS NULL;
-- At most one system default account.
CREATE UNIQUE INDEX accounts_one_default ON accounts ((true)) WHERE is_default AND deleted_at IS NULL;
CREATE INDEX accounts_newest_first ON accounts (created_at DESC, id) WHERE deleted_at IS NULL;

-- Transactional outbox: events written in the same transaction as the change they describe,
-- published to mail.events by a drainer after commit.
CREATE TABLE account_outbox (
    id          bigserial   PRIMARY KEY,
    routing_key text        NOT NULL,
    event_id    text        NOT NULL UNIQUE,
    body        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
