-- The sender's events go out through an outbox written in the outcome's own transaction: the
-- job is acked once its outcome and its events are committed, without waiting for the
-- broker's confirms of the events (a relay publishes them in batches).
CREATE TABLE sender_outbox (
    id          bigserial   PRIMARY KEY,
    routing_key text        NOT NULL,
    event_id    text        NOT NULL,
    body        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

DROP FUNCTION record_outcome(text, integer, text, integer, text, text, uuid, text, boolean);

-- One round trip per outcome, as before, and now also:
-- * p_hold: the sender keeps the account's lease for this long after the send (the pause plus
--   a little), so that its next send needs no round trip to take it; NULL gives it back;
-- * p_event: the mail.* event of this outcome (its attempts filled in here), and, when this
--   outcome completes the delivery, its delivery.completed event (id p_completed_id).
-- It returns whether the outcome applied, the attempts so far and whether the lease is still
-- the sender's; the events carry the rest (the counters the old function returned).
CREATE FUNCTION record_outcome(
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
        UPDATE account_runtime SET last_end = clock_timestamp(),
               lease_owner = CASE WHEN p_hold IS NULL THEN NULL ELSE p_owner END,
               lease_until = clock_timestamp() + p_hold
         WHERE account_id = p_account AND lease_owner = p_owner;
        GET DIAGNOSTICS n = ROW_COUNT;
        kept := n = 1 AND p_hold IS NOT NULL;
    END IF;
    UPDATE delivery_recipients r
       SET state = p_state, attempts = r.attempts + 1, last_smtp_code = p_code,
           last_smtp_message = p_message, message_id = coalesce(p_message_id, r.message_id),
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
