//! Learner erasure in the state store (CONTRACT.md, "Learner data lifecycle").
//!
//! - [`record`] records the learner in `erased_learners` and revokes their issued Open Badges
//!   credentials (their status rows keep only their index: the status list must keep the
//!   bit). Each component then removes its own rows of the learner in the same transaction
//!   (`processors::erasure::erase` runs them all; [`delete_learner_rows`] is their helper).
//! - [`erased`] tells which learners of a batch are erased: every processor asks it in the
//!   transaction of the batch, after [`guard`], and drops those learners' events.
//!
//! Why an erased learner never comes back: a batch transaction takes the erasure lock shared
//! ([`guard`]) before it reads the list, and [`record`] takes it exclusively before it writes
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

/// What [`record`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The learner was erased before.
    pub already_erased: bool,
    /// When the learner was first erased, µs since the epoch.
    pub erased_at_us: i64,
    /// Issued credentials now revoked (their status row keeps only its index).
    pub credentials_revoked: u64,
}

/// This crate's part of erasing `learner` of `tenant` in `tx`; idempotent. Takes the erasure
/// lock exclusively (see the module documentation), records the learner in `erased_learners`
/// (`now_us` is the time recorded for a first erasure) and revokes their credentials. The
/// components then delete their own rows of the learner in the same transaction
/// (`processors::erasure::erase`).
pub async fn record(tx: &mut Tx, backend: Backend, tenant: &str, learner: &str, now_us: i64) -> Result<Recorded, StoreError> {
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
    let credentials_revoked = sqlx::query(
        "UPDATE credential_status SET learner_id = 'erased:' || CAST(status_index AS TEXT), \
         revoked_at_us = COALESCE(revoked_at_us, $3) WHERE tenant = $1 AND learner_id = $2",
    )
    .bind(tenant)
    .bind(learner)
    .bind(now_us)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(Recorded { already_erased: inserted == 0, erased_at_us, credentials_revoked })
}

/// The rows of one learner: `condition` for [`delete_learner_rows`].
pub const LEARNER: &str = "tenant = $1 AND learner_id = $2";

/// Deletes the rows of `table` where `condition` holds, with `$1` bound to the tenant and `$2`
/// to the learner (usually [`LEARNER`]); the count deleted. For the components' erasures.
pub async fn delete_learner_rows(tx: &mut Tx, table: &str, condition: &str, tenant: &str, learner: &str) -> Result<u64, StoreError> {
    let sql = format!("DELETE FROM {table} WHERE {condition}");
    Ok(sqlx::query(&sql).bind(tenant).bind(learner).execute(&mut **tx).await?.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    #[tokio::test]
    async fn erasure_is_recorded_once_and_found_per_tenant() {
        let store = Store::open("sqlite::memory:", 1, crate::schema::TEST_COMPONENT_TABLES).await.expect("open");
        let mut tx = store.begin().await.expect("begin");
        let first = record(&mut tx, store.backend(), "t", "l1", 5).await.expect("erase");
        assert_eq!(first, Recorded { already_erased: false, erased_at_us: 5, credentials_revoked: 0 });
        let again = record(&mut tx, store.backend(), "t", "l1", 9).await.expect("erase again");
        assert_eq!(again, Recorded { already_erased: true, erased_at_us: 5, credentials_revoked: 0 }, "the first erasure's time is kept");
        guard(&mut tx, store.backend()).await.expect("guard");
        let found = erased(&mut tx, [("t", "l1"), ("t", "l2"), ("u", "l1")]).await.expect("erased");
        assert_eq!(found, HashSet::from([("t".to_owned(), "l1".to_owned())]));
        tx.commit().await.expect("commit");
    }
}
