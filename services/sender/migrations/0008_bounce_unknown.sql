-- A bounce proves that a server took the mail: a recipient whose outcome was `unknown` (the
-- connection lost after DATA) is bounced too, not only a `sent` one (review of issue 15).
CREATE OR REPLACE FUNCTION record_bounce(
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
     WHERE r.delivery_id = p_delivery_id AND r.idx = p_idx AND r.state IN ('sent', 'unknown')
    RETURNING lower(r.email) INTO address;
    IF address IS NULL THEN  -- bounced already (a second report of it), or never sent
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
