-- The outcome's record, third version. Since 0002:
-- * last_end, the end of every SMTP transaction that reached the server, is kept whoever
--   holds the lease by then (a send that outlasted it, a record retried after the database
--   came back) and only moves forward; the lease itself is changed only by its owner;
-- * quotas (contract §6): every message a server accepted, at its 250, per account, kept for
--   a day (the longest window) in account_sends; the sender counts the windows from it when
--   it takes the lease, so they hold across restarts and replicas;
-- * fail-over (contract §6): the ledger keeps which account sent (or last tried) each
--   recipient; a standby's differs from the delivery's account.
CREATE TABLE account_sends (
    account_id uuid        NOT NULL,
    at         timestamptz NOT NULL
);
CREATE INDEX account_sends_by_account ON account_sends (account_id, at);

ALTER TABLE delivery_recipients ADD COLUMN account_id uuid;

CREATE OR REPLACE FUNCTION record_outcome(
    p_delivery_id text, p_idx integer, p_state text, p_code integer, p_message text,
    p_message_id text, p_account uuid, p_owner text, p_touched_server boolean,
    p_hold interval, p_event jsonb, p_completed_id text
) RETURNS TABLE (applied boolean, attempts integer, lease_kept boolean)
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    tries integer;
    kept boolean := false;
    settles boolean := p_state IN ('sent', 'failed', 'unknown');
    d record;
    done boolean;
BEGIN
    IF p_touched_server THEN
        UPDATE account_runtime
           SET last_end = greatest(last_end, clock_timestamp()),
               lease_owner = CASE WHEN lease_owner IS DISTINCT FROM p_owner THEN lease_owner
                                  WHEN p_hold IS NULL THEN NULL ELSE p_owner END,
               lease_until = CASE WHEN lease_owner IS DISTINCT FROM p_owner THEN lease_until
                                  ELSE clock_timestamp() + p_hold END
         WHERE account_id = p_account
        RETURNING coalesce(lease_owner = p_owner, false) INTO kept;
        kept := coalesce(kept, false);
        IF p_state = 'sent' THEN  -- counted even for a copy: it reached the server too
            INSERT INTO account_sends (account_id, at) VALUES (p_account, clock_timestamp());
        END IF;
    END IF;
    UPDATE delivery_recipients r
       SET state = p_state, attempts = r.attempts + 1, last_smtp_code = p_code,
           last_smtp_message = p_message, message_id = coalesce(p_message_id, r.message_id),
           account_id = CASE WHEN p_touched_server THEN p_account ELSE r.account_id END,
           updated_at = now()
     WHERE r.delivery_id = p_delivery_id AND r.idx = p_idx
       AND r.state NOT IN ('sent', 'failed', 'unknown')
    RETURNING r.attempts INTO tries;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RETURN QUERY SELECT false, 0, kept;
        RETURN;
    END IF;
    IF p_event IS NOT NULL THEN
        INSERT INTO sender_outbox (routing_key, event_id, body)
        VALUES (p_event->>'type', p_event->>'event_id',
                jsonb_set(p_event, '{attempts}', to_jsonb(tries)));
    END IF;
    IF NOT settles THEN
        RETURN QUERY SELECT true, tries, kept;
        RETURN;
    END IF;
    UPDATE deliveries AS x
       SET sent = x.sent + (p_state = 'sent')::int,
           failed = x.failed + (p_state = 'failed')::int,
           unknown = x.unknown + (p_state = 'unknown')::int,
           completed_at = CASE
               WHEN x.completed_at IS NULL AND x.sent + x.failed + x.unknown + 1 = x.total
               THEN now() ELSE x.completed_at END
     WHERE x.delivery_id = p_delivery_id
    RETURNING x.sent, x.failed, x.unknown, x.total, x.metadata, x.completed_at INTO d;
    done := d.completed_at IS NOT NULL AND d.sent + d.failed + d.unknown = d.total
            AND d.completed_at = now();
    IF done AND p_completed_id IS NOT NULL THEN
        -- The contract's event has sent and failed: failed counts the unknown outcomes too.
        INSERT INTO sender_outbox (routing_key, event_id, body)
        VALUES ('delivery.completed', p_completed_id, jsonb_build_object(
            'type', 'delivery.completed', 'event_id', p_completed_id,
            'occurred_at', clock_timestamp(), 'delivery_id', p_delivery_id,
            'metadata', d.metadata, 'sent', d.sent, 'failed', d.failed + d.unknown,
            'total', d.total));
    END IF;
    RETURN QUERY SELECT true, tries, kept;
END;
$$;
