-- Achievement facts per learner (order-insensitive: earliest time per fact) and unlocks.
CREATE TABLE achievement_facts (
    tenant     TEXT   NOT NULL,
    learner_id TEXT   NOT NULL,
    kind       TEXT   NOT NULL, -- lesson_completed | course_completed | enrolled | perfect_score
    course_id  TEXT   NOT NULL, -- '' when the fact is not about one course
    at_us      BIGINT NOT NULL, -- earliest event time of the fact
    PRIMARY KEY (tenant, learner_id, kind, course_id)
);

-- Learning activity per 15-minute slot, for streaks: days are cut in the learner's time zone
-- when the achievement rules are evaluated, so a time zone set later still applies.
CREATE TABLE achievement_activity (
    tenant     TEXT   NOT NULL,
    learner_id TEXT   NOT NULL,
    slot_us     BIGINT NOT NULL, -- event time truncated to 15 minutes (µs): every UTC offset in use is a multiple of 15 minutes
    first_at_us BIGINT NOT NULL, -- earliest event time in the slot
    PRIMARY KEY (tenant, learner_id, slot_us)
);

CREATE TABLE achievements (
    tenant         TEXT   NOT NULL,
    learner_id     TEXT   NOT NULL,
    achievement_id TEXT   NOT NULL,
    course_id      TEXT   NOT NULL, -- '' for achievements not about one course
    title          TEXT   NOT NULL,
    unlocked_at_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, learner_id, achievement_id, course_id)
);

-- Learner settings shared by processors (time zone for streaks, notification preferences).
CREATE TABLE learner_preferences (
    tenant        TEXT   NOT NULL,
    learner_id    TEXT   NOT NULL,
    timezone      TEXT,
    preferences   TEXT   NOT NULL, -- JSON, the CONTRACT shape
    updated_at_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, learner_id)
);
