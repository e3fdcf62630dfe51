-- Retirements get a table of their own: on the re-keyed catalog topic a retirement and
-- the publications of its course may sit on different partitions and arrive in any
-- order, so a retirement must be kept even when its course is not (yet) in
-- `catalog_courses`. The earliest retirement time is kept. Nothing reads it yet; it is
-- recorded for readers (a retired course keeps its learners' progress, see CONTRACT.md).
CREATE TABLE catalog_retirements (
    tenant        TEXT   NOT NULL,
    course_id     TEXT   NOT NULL,
    retired_at_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, course_id)
);

INSERT INTO catalog_retirements (tenant, course_id, retired_at_us)
SELECT tenant, course_id, retired_at_us FROM catalog_courses WHERE retired_at_us IS NOT NULL;

ALTER TABLE catalog_courses DROP COLUMN retired_at_us;
