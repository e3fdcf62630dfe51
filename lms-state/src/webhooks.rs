//! Payment webhooks the API accepted, kept so that a redelivery answers 200 and produces
//! nothing whichever API instance receives it, before or after a restart.
//!
//! One row per (tenant, provider's webhook id), written after the event was produced. Two
//! instances receiving the same delivery at the same moment may both produce it: the event
//! id is deterministic (a UUIDv5 of tenant and webhook id), so the processors drop the second
//! copy. Rows older than the retention are deleted by [`expire`].

use crate::sql::now_us;
use crate::{Store, StoreError};

/// True when this webhook of `tenant` was accepted before.
pub async fn accepted(store: &Store, tenant: &str, webhook_id: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM webhook_deliveries WHERE tenant = $1 AND webhook_id = $2")
        .bind(tenant)
        .bind(webhook_id)
        .fetch_optional(store.pool())
        .await?;
    Ok(row.is_some())
}

/// Records an accepted webhook (a second record of the same one changes nothing).
pub async fn record(store: &Store, tenant: &str, webhook_id: &str, event_id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (tenant, webhook_id, event_id, accepted_at_us) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant, webhook_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(webhook_id)
    .bind(event_id)
    .bind(now_us())
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Deletes the records of webhooks accepted more than `retention_days` ago; returns how
/// many. A redelivery older than that is produced again (with the same event id).
pub async fn expire(store: &Store, retention_days: u32) -> Result<u64, StoreError> {
    let cutoff = now_us() - i64::from(retention_days) * 86_400 * 1_000_000;
    let done = sqlx::query("DELETE FROM webhook_deliveries WHERE accepted_at_us < $1").bind(cutoff).execute(store.pool()).await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recorded_webhook_is_accepted_until_it_expires() {
        let store = Store::open("sqlite::memory:", 1, crate::schema::TEST_COMPONENT_TABLES).await.expect("store");
        assert!(!accepted(&store, "acme", "wh_1").await.expect("lookup"));
        record(&store, "acme", "wh_1", "e1").await.expect("record");
        record(&store, "acme", "wh_1", "e1").await.expect("a second record changes nothing");
        assert!(accepted(&store, "acme", "wh_1").await.expect("lookup"));
        assert!(!accepted(&store, "globex", "wh_1").await.expect("lookup"), "per tenant");
        assert_eq!(expire(&store, 1).await.expect("expire"), 0, "younger than a day");
        assert_eq!(expire(&store, 0).await.expect("expire"), 1);
        assert!(!accepted(&store, "acme", "wh_1").await.expect("lookup"));
    }
}
