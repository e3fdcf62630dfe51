//! Learner erasure in the state store (CONTRACT.md, "Learner data lifecycle").
//!
//! - [`erase`] records the learner in `erased_learners` and removes every row the store
//!   holds of them: contact data and preferences, the inbox, pending deliveries and their
//!   attempts, throttle counters and digests, progress facts, achievements and their facts,
//!   the dedupe rows of their video reports. Issued Open Badges credentials are revoked and
//!   their status rows keep only their index (the status list must keep the bit).
//! - [`erased`] tells which learners of a batch are erased: every processor asks it in the
//!   transaction of the batch, after [`guard`], and drops those learners' events.
//!
//! Why an erased learner never comes back: a batch transaction takes the erasure lock shared
//! ([`guard`]) before it reads the list, and [`erase`] takes it exclusively before it writes
//! the list and deletes. So a batch either committed before the erasure began (and the
//! erasure deletes what it wrote) or reads the list after the erasure committed (and drops
//! the learner's events). On SQLite the single connection serialises both anyway.

use std::collections::{BTreeMap, HashSet};

use sqlx::Row;

use crate::sql::{CHUNK_ROWS, list, lock_key, lock_keys};
use crate::{Backend, StoreError, Tx};

/// The advisory lock between batch transactions (shared) and erasures (exclusive).
fn erasure_lock() -> i64 {
    lock_key("erasure", &[])
}

/// Takes the erasure lock shared, for the rest of the transaction. Call it before
/// [`erased`] in every transaction that writes a learner's state.
pub async fn guard(tx: &mut Tx, backend: Backend) -> Result<(), StoreError> {
    lock_keys(tx, backend, &[erasure_lock()], false).await
}

/// Which of `learners` (tenant, learner id) are erased.
pub async fn erased<'a>(
    tx: &mut Tx,
    learners: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<HashSet<(String, String)>, StoreError> {
    let mut by_tenant: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tenant, learner) in learners {
        by_tenant.entry(tenant).or_default().push(learner);
    }
    let mut found = HashSet::new();
    for (tenant, mut learners) in by_tenant {
        learners.sort_unstable();
        learners.dedup();
        for chunk in learners.chunks(CHUNK_ROWS) {
            let sql = format!("SELECT learner_id FROM erased_learners WHERE tenant = $1 AND learner_id IN ({})", list(chunk.len(), 2));
            let mut q = sqlx::query(&sql).bind(tenant);
            for l in chunk {
                q = q.bind(*l);
            }
            for row in q.fetch_all(&mut **tx).await? {
                found.insert((tenant.to_owned(), row.try_get::<String, _>(0)?));
            }
        }
    }
    Ok(found)
}

/// What one erasure removed from the state store, rows per kind of data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// The learner was erased before (this erasure only removed what came in meanwhile,
    /// which is nothing unless an older processor wrote it).
    pub already_erased: bool,
    /// When the learner was first erased, µs since the epoch.
    pub erased_at_us: i64,
    /// Contact data and notification preferences (0 or 1).
    pub preferences: u64,
    /// Inbox notifications.
    pub notifications: u64,
    /// Pending and past deliveries with their attempts, throttle counters, digests and the
    /// payment-to-learner map of the notifications.
    pub deliveries: u64,
    /// Progress facts: completed lessons, course rows, completions.
    pub progress: u64,
    /// Unlocked achievements and the facts the rules read.
    pub achievements: u64,
    /// Dedupe rows of the learner's video reports.
    pub dedupe: u64,
    /// Issued credentials now revoked (their status row keeps only its index).
    pub credentials_revoked: u64,
}

/// Erases `learner` of `tenant` in `tx` (see the module documentation); idempotent.
/// `now_us` is the time recorded for a first erasure.
pub async fn erase(tx: &mut Tx, backend: Backend, tenant: &str, learner: &str, now_us: i64) -> Result<Erased, StoreError> {
    lock_keys(tx, backend, &[erasure_lock()], true).await?;
    let inserted = sqlx::query(
        "INSERT INTO erased_learners (tenant, learner_id, erased_at_us) VALUES ($1, $2, $3) ON CONFLICT (tenant, learner_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(learner)
    .bind(now_us)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    let erased_at_us: i64 = sqlx::query("SELECT erased_at_us FROM erased_learners WHERE tenant = $1 AND learner_id = $2")
        .bind(tenant)
        .bind(learner)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    let mut out = Erased { already_erased: inserted == 0, erased_at_us, ..Erased::default() };

    // The notifications' dependent rows first: they find the learner through the inbox.
    const BY_NOTIFICATION: &str = "notification_id IN (SELECT id FROM notifications WHERE tenant = $1 AND learner_id = $2)";
    out.deliveries += delete(tx, "notification_attempts", &format!("tenant = $1 AND {BY_NOTIFICATION}"), tenant, learner).await?;
    for table in ["notification_deliveries", "notification_counters", "notification_digests", "notification_payments"] {
        out.deliveries += delete(tx, table, LEARNER, tenant, learner).await?;
    }
    out.notifications = delete(tx, "notifications", LEARNER, tenant, learner).await?;
    out.preferences = delete(tx, "learner_preferences", LEARNER, tenant, learner).await?;
    for table in ["progress_lessons", "progress_courses", "course_completions"] {
        out.progress += delete(tx, table, LEARNER, tenant, learner).await?;
    }
    out.dedupe = delete(tx, "progress_seen", LEARNER, tenant, learner).await?;
    for table in ["achievements", "achievement_facts", "achievement_activity", "achievement_enrollments"] {
        out.achievements += delete(tx, table, LEARNER, tenant, learner).await?;
    }
    out.credentials_revoked = sqlx::query(
        "UPDATE credential_status SET learner_id = 'erased:' || CAST(status_index AS TEXT), \
         revoked_at_us = COALESCE(revoked_at_us, $3) WHERE tenant = $1 AND learner_id = $2",
    )
    .bind(tenant)
    .bind(learner)
    .bind(now_us)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(out)
}

const LEARNER: &str = "tenant = $1 AND learner_id = $2";

async fn delete(tx: &mut Tx, table: &str, condition: &str, tenant: &str, learner: &str) -> Result<u64, StoreError> {
    let sql = format!("DELETE FROM {table} WHERE {condition}");
    Ok(sqlx::query(&sql).bind(tenant).bind(learner).execute(&mut **tx).await?.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    #[tokio::test]
    async fn erasure_is_recorded_once_and_found_per_tenant() {
        let store = Store::open("sqlite::memory:", 1).await.expect("open");
        let mut tx = store.begin().await.expect("begin");
        sqlx::query("INSERT INTO progress_lessons (tenant, learner_id, course_id, lesson_id, first_completed_at_us) VALUES ('t', 'l1', 'c', 'x', 1)")
            .execute(&mut *tx)
            .await
            .expect("insert");
        let first = erase(&mut tx, store.backend(), "t", "l1", 5).await.expect("erase");
        assert!(!first.already_erased);
        assert_eq!((first.progress, first.erased_at_us), (1, 5));
        let again = erase(&mut tx, store.backend(), "t", "l1", 9).await.expect("erase again");
        assert!(again.already_erased);
        assert_eq!((again.progress, again.erased_at_us), (0, 5), "the first erasure's time is kept");
        guard(&mut tx, store.backend()).await.expect("guard");
        let found = erased(&mut tx, [("t", "l1"), ("t", "l2"), ("u", "l1")]).await.expect("erased");
        assert_eq!(found, HashSet::from([("t".to_owned(), "l1".to_owned())]));
        tx.commit().await.expect("commit");
    }
}
