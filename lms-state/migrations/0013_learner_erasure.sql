-- Learner erasure (CONTRACT.md, "Learner data lifecycle"): the learners erased per tenant,
-- which every processor checks where events enter processing (`lms_store::erasure`), and
-- the learner of each seen video report, so that an erasure removes those rows too (rows
-- written before this migration have '' and stay).
CREATE TABLE erased_learners (
    tenant       TEXT   NOT NULL,
    learner_id   TEXT   NOT NULL,
    erased_at_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, learner_id)
);
ALTER TABLE progress_seen ADD COLUMN learner_id TEXT NOT NULL DEFAULT '';
CREATE INDEX progress_seen_by_learner ON progress_seen (tenant, learner_id);
CREATE INDEX notification_payments_by_learner ON notification_payments (tenant, learner_id);
