//! What the notifications component keeps in the state store: its migrations (`migrations/`)
//! and its erasure of a learner. Not behind the `delivery` feature: the API migrates and
//! erases these tables without the delivery stack.

use lms_state::erasure::{LEARNER, delete_learner_rows};
use lms_state::schema::Migration;
use lms_state::{StoreError, Tx};

use crate::state::{ErasedState, Owner};

/// The component's part of the state store.
pub const STATE: Owner =
    Owner { name: "notifications", migrations: MIGRATIONS, erase: |tx, tenant, learner| Box::pin(erase(tx, tenant, learner)) };

/// The inbox, deliveries and their attempts, throttle counters, digests and the
/// payment-to-learner map. `learner_preferences`, which it owns too, came with the
/// achievements' migration 3 as released.
pub const MIGRATIONS: &[Migration] = &[
    Migration::new(4, "notifications", "notifications", include_str!("migrations/0004_notifications.sql")),
    Migration::new(7, "notification retention", "notifications", include_str!("migrations/0007_notification_retention.sql")),
    Migration::new(
        8,
        "drop notifications digest index",
        "notifications",
        include_str!("migrations/0008_drop_notifications_digest_index.sql"),
    ),
];

/// Deletes the learner's contact data and preferences, inbox and deliveries.
async fn erase(tx: &mut Tx, tenant: &str, learner: &str) -> Result<ErasedState, StoreError> {
    // The attempts first: they find the learner through the inbox.
    const BY_NOTIFICATION: &str = "tenant = $1 AND notification_id IN (SELECT id FROM notifications WHERE tenant = $1 AND learner_id = $2)";
    let mut out = ErasedState {
        deliveries: delete_learner_rows(tx, "notification_attempts", BY_NOTIFICATION, tenant, learner).await?,
        ..ErasedState::default()
    };
    for table in ["notification_deliveries", "notification_counters", "notification_digests", "notification_payments"] {
        out.deliveries += delete_learner_rows(tx, table, LEARNER, tenant, learner).await?;
    }
    out.notifications = delete_learner_rows(tx, "notifications", LEARNER, tenant, learner).await?;
    out.preferences = delete_learner_rows(tx, "learner_preferences", LEARNER, tenant, learner).await?;
    Ok(out)
}
