-- A short number per delivery: a VERP envelope sender (issue 15) names its recipient by it
-- and the recipient's index, under a MAC, never by the caller's delivery_id (it may be long,
-- and say things about the recipient).
ALTER TABLE deliveries ADD COLUMN ref bigint GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX deliveries_ref ON deliveries (ref);
