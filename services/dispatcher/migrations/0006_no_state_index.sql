-- No query needs the index on (delivery_id, state): every query on the table names a
-- delivery_id, which the primary key serves. Without it, the COPY of a large delivery and
-- every change of a recipient's state (the fan-out's to `queued`, the sender's outcome)
-- write one index entry fewer.
DROP INDEX IF EXISTS delivery_recipients_state;
