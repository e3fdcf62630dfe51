-- The revision of a learner-course's figures: every recomputation takes the next one and
-- puts it on its `progress.updated`, so the analytics keep the latest figures instead of
-- the furthest (a course version that arrives late may lower them). 0 until the first
-- recomputation after this migration.
ALTER TABLE progress_courses ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
