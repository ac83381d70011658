-- The outcome's record, fourth version, for delivery control and the suppression list
-- (contract §6):
-- * `expired` settles a recipient like `failed` (the delivery's `failed` counts it);
-- * a `cancelled` recipient is settled and never sent, except by a transaction already on the
--   wire when the cancel committed: its 250 (or an unknown end) is recorded, and the
--   delivery's counts move from cancelled to sent;
-- * a delivery's suppressed recipients (dispatcher migration 0004) count in its total, never
--   as sent or failed;
-- * the delivery is complete when sent + failed + unknown + cancelled + suppressed reach the
--   total, and delivery.completed carries `cancelled` and `suppressed`.
CREATE OR REPLACE FUNCTION record_outcome(
    p_delivery_id text, p_idx integer, p_state text, p_code integer, p_message text,
    p_message_id text, p_account uuid, p_owner text, p_touched_server boolean,
    p_hold interval, p_event jsonb, p_completed_id text
) RETURNS TABLE (applied boolean, attempts integer, lease_kept boolean)
LANGUAGE plpgsql AS $$
DECLARE
    tries integer;
    kept boolean := false;
    settles boolean := p_state IN ('sent', 'failed', 'unknown', 'expired');
    prev text;
    uncancelled integer;
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
    SELECT r.state INTO prev FROM delivery_recipients r
     WHERE r.delivery_id = p_delivery_id AND r.idx = p_idx FOR UPDATE;
    IF prev IS NULL OR prev IN ('sent', 'failed', 'unknown', 'expired')
       OR (prev = 'cancelled' AND NOT (p_touched_server AND p_state IN ('sent', 'unknown'))) THEN
        RETURN QUERY SELECT false, 0, kept;
        RETURN;
    END IF;
    uncancelled := (prev = 'cancelled')::int;
    UPDATE delivery_recipients r
       SET state = p_state, attempts = r.attempts + 1, last_smtp_code = p_code,
           last_smtp_message = p_message, message_id = coalesce(p_message_id, r.message_id),
           account_id = CASE WHEN p_touched_server THEN p_account ELSE r.account_id END,
           updated_at = now()
     WHERE r.delivery_id = p_delivery_id AND r.idx = p_idx
    RETURNING r.attempts INTO tries;
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
           failed = x.failed + (p_state IN ('failed', 'expired'))::int,
           unknown = x.unknown + (p_state = 'unknown')::int,
           cancelled = x.cancelled - uncancelled,
           completed_at = CASE
               WHEN x.completed_at IS NULL
                    AND x.sent + x.failed + x.unknown + x.cancelled + x.suppressed + 1 - uncancelled
                        = x.total
               THEN now() ELSE x.completed_at END
     WHERE x.delivery_id = p_delivery_id
    RETURNING x.sent, x.failed, x.unknown, x.cancelled, x.suppressed, x.total, x.metadata,
              x.completed_at INTO d;
    done := d.completed_at IS NOT NULL AND d.completed_at = now()
            AND d.sent + d.failed + d.unknown + d.cancelled + d.suppressed = d.total;
    IF done AND p_completed_id IS NOT NULL THEN
        -- The contract's event has sent and failed: failed counts the unknown outcomes too.
        INSERT INTO sender_outbox (routing_key, event_id, body)
        VALUES ('delivery.completed', p_completed_id, jsonb_build_object(
            'type', 'delivery.completed', 'event_id', p_completed_id,
            'occurred_at', clock_timestamp(), 'delivery_id', p_delivery_id,
            'metadata', d.metadata, 'sent', d.sent, 'failed', d.failed + d.unknown,
            'cancelled', d.cancelled, 'suppressed', d.suppressed, 'total', d.total));
    END IF;
    RETURN QUERY SELECT true, tries, kept;
END;
$$;
