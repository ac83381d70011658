-- Bounces (contract §6, issue 15): a recipient's row gains its bounce (state `bounced` after
-- `sent`), the delivery counts them, `mail.bounced` goes out through the outbox, and the
-- address is suppressed after a hard bounce or a complaint, or after soft bounces beyond a
-- count within a window; never after a policy bounce. One transaction a bounce.
ALTER TABLE delivery_recipients
    ADD COLUMN bounce_kind       text,
    ADD COLUMN bounce_status     text,
    ADD COLUMN bounce_diagnostic text,
    ADD COLUMN bounced_at        timestamptz;
ALTER TABLE deliveries ADD COLUMN bounced integer NOT NULL DEFAULT 0;
-- A bounce names its mail by Message-ID (one a recipient).
CREATE INDEX delivery_recipients_message_id ON delivery_recipients (message_id)
    WHERE message_id IS NOT NULL;

-- Every bounce of an address, for the soft-bounce count.
CREATE TABLE bounce_log (
    email_key text        NOT NULL,
    kind      text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bounce_log_by_address ON bounce_log (email_key, at);

-- A bounce that matched no recipient: kept, counted, never guessed onto one.
CREATE TABLE bounces_unmatched (
    id          bigserial   PRIMARY KEY,
    account_id  uuid,
    report      text        NOT NULL,    -- dsn, complaint, plain, unknown
    message_id  text,
    recipient   text,
    detail      text,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION record_bounce(
    p_delivery_id text, p_idx integer, p_kind text, p_status text, p_diagnostic text,
    p_event jsonb, p_soft_limit integer, p_soft_window interval
) RETURNS TABLE (applied boolean, suppressed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    address text;
    softs integer;
    suppress boolean := false;
BEGIN
    UPDATE delivery_recipients r
       SET state = 'bounced', bounce_kind = p_kind, bounce_status = p_status,
           bounce_diagnostic = p_diagnostic, bounced_at = now(), updated_at = now()
     WHERE r.delivery_id = p_delivery_id AND r.idx = p_idx AND r.state = 'sent'
    RETURNING lower(r.email) INTO address;
    IF address IS NULL THEN  -- unknown, or bounced already (a second report of it)
        RETURN QUERY SELECT false, false;
        RETURN;
    END IF;
    UPDATE deliveries SET bounced = bounced + 1 WHERE delivery_id = p_delivery_id;
    INSERT INTO bounce_log (email_key, kind) VALUES (address, p_kind);
    IF p_kind IN ('hard', 'complaint') THEN
        suppress := true;
    ELSIF p_kind = 'soft' THEN
        SELECT count(*) INTO softs FROM bounce_log
         WHERE email_key = address AND kind = 'soft' AND at > now() - p_soft_window;
        suppress := softs >= p_soft_limit;
    END IF;
    IF suppress THEN
        INSERT INTO suppressions (email_key, email, reason, source, detail)
        SELECT address, r.email, p_kind, CASE WHEN p_kind = 'complaint' THEN 'complaint'
                                              ELSE 'bounce' END,
               left(coalesce(p_status || ' ', '') || p_diagnostic, 1000)
          FROM delivery_recipients r WHERE r.delivery_id = p_delivery_id AND r.idx = p_idx
        ON CONFLICT (email_key) DO NOTHING;
    END IF;
    INSERT INTO sender_outbox (routing_key, event_id, body)
    VALUES (p_event->>'type', p_event->>'event_id', p_event);
    RETURN QUERY SELECT true, suppress;
END;
$$;
