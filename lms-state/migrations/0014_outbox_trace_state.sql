-- The W3C `tracestate` and `baggage` of a derived event's trace, produced with it as record
-- headers next to its `traceparent` (NULL: none, and for rows written before this column).
ALTER TABLE outbox ADD COLUMN tracestate TEXT;
ALTER TABLE outbox ADD COLUMN baggage TEXT;
