-- Every enrolment of a learner in a course, not only the earliest: "completed within N days
-- of enrolling" holds when some enrolment at or before the completion is at most N days
-- before it. That only ever becomes true as enrolments arrive, whatever their order, so an
-- achievement unlocked on the way is one that processing in time order unlocks too (with
-- the earliest enrolment alone, a later re-enrolment seen first unlocked it, and the
-- earlier one arriving after could not take it back).
CREATE TABLE achievement_enrollments (
    tenant     TEXT   NOT NULL,
    learner_id TEXT   NOT NULL,
    course_id  TEXT   NOT NULL,
    at_us      BIGINT NOT NULL, -- event time of the enrollment.created
    PRIMARY KEY (tenant, learner_id, course_id, at_us)
);

INSERT INTO achievement_enrollments (tenant, learner_id, course_id, at_us)
    SELECT tenant, learner_id, course_id, at_us FROM achievement_facts WHERE kind = 'enrolled';
DELETE FROM achievement_facts WHERE kind = 'enrolled';
