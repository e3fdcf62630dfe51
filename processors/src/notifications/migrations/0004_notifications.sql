-- Notifications: the decisions of the notifications processor, the in-app inbox, the
-- delivery intents the dispatcher performs, and the durable timers (digests).
-- Preferences live in learner_preferences (0003), written by the preferences endpoint.

-- One row per notification: per source event and learner (dedupe), per milestone, or per
-- digest. The inbox lists the rows whose in-app delivery happened (visible_at_us).
CREATE TABLE notifications (
    tenant          TEXT   NOT NULL,
    id              TEXT   NOT NULL, -- UUIDv5 of (tenant, learner, source key)
    learner_id      TEXT   NOT NULL,
    category        TEXT   NOT NULL,
    source_key      TEXT   NOT NULL, -- the source event id, `milestone:<course>:<n>` or `digest:<key>`
    source_event_id TEXT   NOT NULL,
    title           TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    state           TEXT   NOT NULL, -- direct | muted | superseded | digest (waits in digest_key) | digested
    digest_key      TEXT,            -- the digest that carries (or carried) it
    event_at_us     BIGINT NOT NULL, -- event time of the source event (digest items are in this order)
    created_at_us   BIGINT NOT NULL, -- when it was decided
    visible_at_us   BIGINT,          -- in-app delivery done: listed in the inbox
    read_at_us      BIGINT,
    -- The id is derived from (tenant, learner, source key), so the key dedupes per source.
    PRIMARY KEY (tenant, id)
);
CREATE INDEX notifications_inbox ON notifications (tenant, learner_id, created_at_us);
CREATE INDEX notifications_digest ON notifications (tenant, learner_id, digest_key) WHERE state = 'digest';

-- One row per notification and channel: what the dispatcher must do, and where it stands.
CREATE TABLE notification_deliveries (
    tenant          TEXT   NOT NULL,
    notification_id TEXT   NOT NULL,
    channel         TEXT   NOT NULL, -- in_app | email | webhook
    learner_id      TEXT   NOT NULL,
    category        TEXT   NOT NULL,
    source_event_id TEXT   NOT NULL,
    target          TEXT,            -- e-mail address (email); the webhook URL is tenant configuration
    state           TEXT   NOT NULL, -- pending | sent | failed
    due_at_us       BIGINT NOT NULL, -- next attempt not before (quiet hours, back-off)
    attempts        BIGINT NOT NULL DEFAULT 0,
    claim           TEXT,            -- the claim of the dispatcher working on it
    claimed_until_us BIGINT,         -- the claim expires then (a crashed dispatcher)
    last_error      TEXT,
    updated_at_us   BIGINT NOT NULL,
    PRIMARY KEY (tenant, notification_id, channel)
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (due_at_us) WHERE state = 'pending';

-- Every delivery attempt and its outcome.
CREATE TABLE notification_attempts (
    tenant          TEXT   NOT NULL,
    notification_id TEXT   NOT NULL,
    channel         TEXT   NOT NULL,
    attempt         BIGINT NOT NULL,
    at_us           BIGINT NOT NULL,
    outcome         TEXT   NOT NULL, -- sent | retry | failed
    error           TEXT,
    PRIMARY KEY (tenant, notification_id, channel, attempt)
);

-- Throttle counters: notifications delivered per learner, category and window.
CREATE TABLE notification_counters (
    tenant          TEXT   NOT NULL,
    learner_id      TEXT   NOT NULL,
    category        TEXT   NOT NULL,
    window_start_us BIGINT NOT NULL,
    sent            BIGINT NOT NULL,
    PRIMARY KEY (tenant, learner_id, category, window_start_us)
);

-- Durable digest timers: one row per learner and digest window; the dispatcher closes it
-- at due_at_us (composes one digest notification of its items) exactly once.
CREATE TABLE notification_digests (
    tenant          TEXT   NOT NULL,
    learner_id      TEXT   NOT NULL,
    digest_key      TEXT   NOT NULL, -- throttle:<category>:<window start µs> | hourly:<start µs> | daily:<start µs>
    due_at_us       BIGINT NOT NULL,
    state           TEXT   NOT NULL, -- open | sent
    PRIMARY KEY (tenant, learner_id, digest_key)
);
CREATE INDEX notification_digests_due ON notification_digests (due_at_us) WHERE state = 'open';

-- The learner of each payment, for refunds (which carry none).
CREATE TABLE notification_payments (
    tenant          TEXT   NOT NULL,
    payment_id      TEXT   NOT NULL,
    learner_id      TEXT   NOT NULL,
    PRIMARY KEY (tenant, payment_id)
);
