-- Open Badges 3.0 credentials the API issued (`lms_store::credentials`): each gets a
-- position in its tenant's revocation status list, allocated once and kept, so the same
-- achievement always yields the same credential; `revoked_at_us` set means revoked.
CREATE TABLE credential_status (
    tenant         TEXT   NOT NULL,
    learner_id     TEXT   NOT NULL,
    achievement_id TEXT   NOT NULL,
    course_id      TEXT   NOT NULL, -- '' for achievements not about one course
    status_index   BIGINT NOT NULL,
    issued_at_us   BIGINT NOT NULL,
    revoked_at_us  BIGINT,
    PRIMARY KEY (tenant, learner_id, achievement_id, course_id)
);
CREATE UNIQUE INDEX credential_status_index ON credential_status (tenant, status_index);
