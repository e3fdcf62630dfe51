//! The in-app inbox: `GET /v1/learners/{id}/notifications` and
//! `POST /v1/learners/{id}/notifications/{nid}/read`. A notification is listed once its
//! in-app delivery happened (after quiet hours, as a digest, …).

use chrono::{DateTime, Utc};
use lms_state::sql::{from_us, now_us};
use lms_state::{Store, StoreError};
use serde::Serialize;
use sqlx::Row as _;

/// One entry of the inbox (the CONTRACT shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Notification))]
pub struct InboxItem {
    /// Notification id.
    pub id: String,
    /// Category: `enrollment`, `payment`, `completion`, `achievement`, `milestone` or `digest`.
    pub category: String,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// When it was decided.
    pub created_at: DateTime<Utc>,
    /// When the learner read it; `null` while unread.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub read_at: Option<DateTime<Utc>>,
}

/// At most this many entries are listed, newest first.
pub const LIST_LIMIT: i64 = 500;

/// The learner's inbox, newest first.
pub async fn list(store: &Store, tenant: &str, learner: &str, unread_only: bool) -> Result<Vec<InboxItem>, StoreError> {
    let unread = if unread_only { " AND read_at_us IS NULL" } else { "" };
    let sql = format!(
        "SELECT id, category, title, body, created_at_us, read_at_us FROM notifications \
         WHERE tenant = $1 AND learner_id = $2 AND visible_at_us IS NOT NULL{unread} \
         ORDER BY created_at_us DESC, id DESC LIMIT $3"
    );
    let rows = sqlx::query(&sql).bind(tenant).bind(learner).bind(LIST_LIMIT).fetch_all(store.pool()).await?;
    rows.into_iter()
        .map(|r| {
            let read: Option<i64> = r.try_get(5)?;
            Ok(InboxItem {
                id: r.try_get(0)?,
                category: r.try_get(1)?,
                title: r.try_get(2)?,
                body: r.try_get(3)?,
                created_at: from_us(r.try_get(4)?)?,
                read_at: read.map(from_us).transpose()?,
            })
        })
        .collect()
}

/// Marks a listed notification read (the first time counts); `false` when the learner
/// has no such notification in the inbox.
pub async fn mark_read(store: &Store, tenant: &str, learner: &str, id: &str) -> Result<bool, StoreError> {
    let now = now_us();
    let rows = sqlx::query(
        "UPDATE notifications SET read_at_us = CASE WHEN read_at_us IS NULL THEN $4 ELSE read_at_us END \
         WHERE tenant = $1 AND learner_id = $2 AND id = $3 AND visible_at_us IS NOT NULL",
    )
    .bind(tenant)
    .bind(learner)
    .bind(id)
    .bind(now)
    .execute(store.pool())
    .await?;
    Ok(rows.rows_affected() > 0)
}
