//! The status of the Open Badges credentials the API issued: each credential's index in its
//! tenant's revocation status list (allocated at the first issue and kept), and whether it
//! was revoked.
//!
//! Two API instances issuing credentials of a tenant at the same moment may pick the same next
//! index: the unique index keeps the second out, and it tries again with the next one.

use sqlx::Row;

use crate::sql::now_us;
use crate::{Store, StoreError};

/// A credential's place in the status list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialStatus {
    /// Index in the tenant's status list.
    pub index: i64,
    /// When it was first issued (µs since the epoch).
    pub issued_at_us: i64,
    /// When it was revoked, if it was.
    pub revoked_at_us: Option<i64>,
}

/// The status of the credential of (learner, achievement, course), allocating its index
/// when it is issued for the first time.
pub async fn issue(store: &Store, tenant: &str, learner: &str, achievement: &str, course: &str) -> Result<CredentialStatus, StoreError> {
    for _ in 0..5 {
        if let Some(status) = get(store, tenant, learner, achievement, course).await? {
            return Ok(status);
        }
        // ON CONFLICT without a target also covers the status index: when another instance
        // took the next index first, nothing is inserted and the loop looks again.
        sqlx::query(
            "INSERT INTO credential_status (tenant, learner_id, achievement_id, course_id, status_index, issued_at_us) \
             SELECT $1, $2, $3, $4, COALESCE(MAX(status_index) + 1, 0), $5 FROM credential_status WHERE tenant = $1 \
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(learner)
        .bind(achievement)
        .bind(course)
        .bind(now_us())
        .execute(store.pool())
        .await?;
    }
    get(store, tenant, learner, achievement, course)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("no status index could be allocated for tenant {tenant:?}")))
}

/// The status of an issued credential, if it was issued.
pub async fn get(
    store: &Store,
    tenant: &str,
    learner: &str,
    achievement: &str,
    course: &str,
) -> Result<Option<CredentialStatus>, StoreError> {
    let row = sqlx::query(
        "SELECT status_index, issued_at_us, revoked_at_us FROM credential_status \
         WHERE tenant = $1 AND learner_id = $2 AND achievement_id = $3 AND course_id = $4",
    )
    .bind(tenant)
    .bind(learner)
    .bind(achievement)
    .bind(course)
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| Ok(CredentialStatus { index: r.try_get(0)?, issued_at_us: r.try_get(1)?, revoked_at_us: r.try_get(2)? })).transpose()
}

/// Revokes an issued credential (a second revocation keeps the first time); false when it
/// was never issued.
pub async fn revoke(store: &Store, tenant: &str, learner: &str, achievement: &str, course: &str) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE credential_status SET revoked_at_us = COALESCE(revoked_at_us, $5) \
         WHERE tenant = $1 AND learner_id = $2 AND achievement_id = $3 AND course_id = $4",
    )
    .bind(tenant)
    .bind(learner)
    .bind(achievement)
    .bind(course)
    .bind(now_us())
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The indexes of `tenant`'s revoked credentials, and one past the largest index issued.
pub async fn revoked(store: &Store, tenant: &str) -> Result<(Vec<i64>, i64), StoreError> {
    let rows = sqlx::query("SELECT status_index FROM credential_status WHERE tenant = $1 AND revoked_at_us IS NOT NULL")
        .bind(tenant)
        .fetch_all(store.pool())
        .await?;
    let revoked = rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<i64>, _>>()?;
    let end = sqlx::query("SELECT COALESCE(MAX(status_index) + 1, 0) FROM credential_status WHERE tenant = $1")
        .bind(tenant)
        .fetch_one(store.pool())
        .await?
        .try_get(0)?;
    Ok((revoked, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn indexes_are_allocated_once_per_credential_and_revocation_sticks() {
        let store = Store::open("sqlite::memory:", 1, crate::schema::TEST_COMPONENT_TABLES).await.expect("store");
        let a = issue(&store, "acme", "ada", "first-lesson", "").await.expect("issue");
        let b = issue(&store, "acme", "bob", "first-lesson", "").await.expect("issue");
        let g = issue(&store, "globex", "ada", "first-lesson", "").await.expect("issue");
        assert_eq!((a.index, b.index, g.index), (0, 1, 0), "per tenant, in issue order");
        assert_eq!(issue(&store, "acme", "ada", "first-lesson", "").await.expect("again"), a, "the same credential again");
        assert!(!revoke(&store, "acme", "eve", "first-lesson", "").await.expect("revoke"), "never issued");
        assert!(revoke(&store, "acme", "bob", "first-lesson", "").await.expect("revoke"));
        let first = get(&store, "acme", "bob", "first-lesson", "").await.expect("get").and_then(|s| s.revoked_at_us);
        assert!(revoke(&store, "acme", "bob", "first-lesson", "").await.expect("revoke"));
        assert_eq!(get(&store, "acme", "bob", "first-lesson", "").await.expect("get").and_then(|s| s.revoked_at_us), first);
        assert_eq!(revoked(&store, "acme").await.expect("revoked"), (vec![1], 2));
        assert_eq!(revoked(&store, "globex").await.expect("revoked"), (vec![], 1));
    }
}
