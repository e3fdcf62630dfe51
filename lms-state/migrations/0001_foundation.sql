-- Offsets kept with the effects (exactly-once processing) and the transactional outbox.
-- Times are microseconds since the Unix epoch (BIGINT) in every table: the same SQL then
-- runs on SQLite, and no driver has to map timestamp types.
CREATE TABLE consumer_offsets (
    group_id      TEXT   NOT NULL,
    topic         TEXT   NOT NULL,
    partition_no  BIGINT NOT NULL,
    next_offset   BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL,
    PRIMARY KEY (group_id, topic, partition_no)
);

CREATE TABLE outbox (
    seq           {{serial_primary_key}},
    event_id      TEXT   NOT NULL,
    payload       {{bytes}}  NOT NULL,
    traceparent   TEXT,
    created_at_us BIGINT NOT NULL
);
