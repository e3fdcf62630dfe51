-- Payment webhooks the API accepted (`lms_store::webhooks`): a redelivery to any API
-- instance, before or after a restart, answers 200 and produces nothing. The API deletes rows
-- older than `api.webhook_retention_days` (index below).
CREATE TABLE webhook_deliveries (
    tenant TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    accepted_at_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, webhook_id)
);
CREATE INDEX webhook_deliveries_accepted ON webhook_deliveries (accepted_at_us);
