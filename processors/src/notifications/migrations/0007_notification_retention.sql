-- The notification retention (`notifications.retention_days`): the dispatcher deletes old
-- rows in bounded batches; these indexes find them without scanning the tables.
CREATE INDEX notification_attempts_at ON notification_attempts (at_us);
CREATE INDEX notification_deliveries_done ON notification_deliveries (updated_at_us) WHERE state <> 'pending';
CREATE INDEX notifications_created ON notifications (created_at_us);
CREATE INDEX notification_digests_closed ON notification_digests (due_at_us) WHERE state <> 'open';
CREATE INDEX notification_counters_window ON notification_counters (window_start_us);
