-- Catalog, learner progress facts, and the record of emitted completions.
-- Progress is kept as order-insensitive facts (sets, minima, maxima, deduplicated sums);
-- the figures of CONTRACT.md are computed from them and the catalog (see processors/src/progress).
CREATE TABLE catalog_courses (
    tenant          TEXT   NOT NULL,
    course_id       TEXT   NOT NULL,
    version         BIGINT NOT NULL,
    title           TEXT   NOT NULL,
    lessons         TEXT   NOT NULL, -- JSON array of the lesson ids of `version`, in course order
    published_at_us BIGINT NOT NULL,
    retired_at_us   BIGINT,
    PRIMARY KEY (tenant, course_id)
);

CREATE TABLE progress_lessons (
    tenant                TEXT   NOT NULL,
    learner_id            TEXT   NOT NULL,
    course_id             TEXT   NOT NULL,
    lesson_id             TEXT   NOT NULL,
    first_completed_at_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, learner_id, course_id, lesson_id)
);

CREATE TABLE progress_courses (
    tenant              TEXT   NOT NULL,
    learner_id          TEXT   NOT NULL,
    course_id           TEXT   NOT NULL,
    time_spent_ms       BIGINT NOT NULL DEFAULT 0, -- sum of watched_s capped at 300 s, each report rounded to the ms: exact, so order-insensitive
    last_activity_at_us BIGINT,
    first_enrolled_at_us BIGINT,
    enrollment_state    TEXT,   -- 'enrolled' | 'dropped' by the latest enrollment event
    enrollment_at_us    BIGINT,
    enrollment_event_id TEXT,
    PRIMARY KEY (tenant, learner_id, course_id)
);
CREATE INDEX progress_courses_by_course ON progress_courses (tenant, course_id);

-- Event ids whose effect is a sum (video reports): counted once however often redelivered.
CREATE TABLE progress_seen (
    tenant   TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (tenant, event_id)
);

-- One row per learner and course whose course.completed was emitted: exactly once.
CREATE TABLE course_completions (
    tenant          TEXT   NOT NULL,
    learner_id      TEXT   NOT NULL,
    course_id       TEXT   NOT NULL,
    completed_at_us BIGINT NOT NULL,
    course_version  BIGINT NOT NULL,
    PRIMARY KEY (tenant, learner_id, course_id)
);
