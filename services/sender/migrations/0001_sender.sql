-- What the sender keeps per account: pacing (the end of its last SMTP transaction and the
-- lease that keeps two replicas from sending for one account at once), the pace in force when
-- a provider throttles, and why the sender paused it.
CREATE TABLE account_runtime (
    account_id          uuid        PRIMARY KEY,
    last_end            timestamptz,
    lease_owner         text,
    lease_until         timestamptz,
    interval_ms         integer,        -- the pace in force after throttling; NULL: configured
    paused_reason       text,           -- auth, tls, sender_refused, connect, pop; NULL: running
    paused_at           timestamptz,
    paused_detail       text
);

-- Live sender replicas, for spreading the active consumers over them.
CREATE TABLE sender_replicas (
    replica_id  text        PRIMARY KEY,
    seen_at     timestamptz NOT NULL DEFAULT now()
);

-- One round trip per outcome: the recipient row, the delivery's counters (completion decided
-- exactly once under the delivery row's lock) and the account's pacing, in one transaction.
CREATE FUNCTION record_outcome(
    p_delivery_id text, p_idx integer, p_state text, p_code integer, p_message text,
    p_message_id text, p_account uuid, p_owner text, p_touched_server boolean
) RETURNS TABLE (applied boolean, completed boolean, sent integer, failed integer,
                 unknown integer, total integer, attempts integer)
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    tries integer;
    settles boolean := p_state IN ('sent', 'failed', 'unknown');
BEGIN
    IF p_touched_server THEN
        UPDATE account_runtime SET last_end = clock_timestamp(), lease_owner = NULL,
               lease_until = NULL
         WHERE account_id = p_account AND lease_owner = p_owner;
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
        RETURN QUERY SELECT false, false, 0, 0, 0, 0, 0;
        RETURN;
    END IF;
    IF NOT settles THEN
        RETURN QUERY SELECT true, false, 0, 0, 0, 0, tries;
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE deliveries d
       SET sent = d.sent + (p_state = 'sent')::int,
           failed = d.failed + (p_state = 'failed')::int,
           unknown = d.unknown + (p_state = 'unknown')::int,
           completed_at = CASE
               WHEN d.completed_at IS NULL AND d.sent + d.failed + d.unknown + 1 = d.total
               THEN now() ELSE d.completed_at END
     WHERE d.delivery_id = p_delivery_id
    RETURNING true, (d.completed_at IS NOT NULL AND d.sent + d.failed + d.unknown = d.total
                     AND d.completed_at = now()),
              d.sent, d.failed, d.unknown, d.total, tries;
END;
$$;
