-- The dispatcher finds a digest's items through notifications_inbox (tenant, learner_id,
-- created_at_us): one learner's rows, a few hundred at most, filtered on digest_key. The
-- partial index on digest items cost every decided notification an index entry (about
-- 5 % of the insert in `loadtest notify`) for a lookup that was already cheap.
DROP INDEX notifications_digest;
