//! What the achievements component keeps in the state store: its migrations (`migrations/`)
//! and its erasure of a learner.

use lms_state::erasure::{LEARNER, delete_learner_rows};
use lms_state::schema::Migration;
use lms_state::{StoreError, Tx};

use crate::state::{ErasedState, Owner};

/// The component's part of the state store.
pub const STATE: Owner =
    Owner { name: "achievements", migrations: MIGRATIONS, erase: |tx, tenant, learner| Box::pin(erase(tx, tenant, learner)) };

/// The facts the rules read and the unlocked achievements. Migration 3, as released, also
/// creates `learner_preferences`, which the notifications component owns (it reads and
/// writes the preferences, and erases them); achievements only read the time zone there.
pub const MIGRATIONS: &[Migration] = &[
    Migration::new(3, "achievements", "achievements", include_str!("migrations/0003_achievements.sql")),
    Migration::new(6, "achievement enrollments", "achievements", include_str!("migrations/0006_achievement_enrollments.sql")),
];

/// Deletes the learner's achievements and the facts their rules read.
async fn erase(tx: &mut Tx, tenant: &str, learner: &str) -> Result<ErasedState, StoreError> {
    let mut out = ErasedState::default();
    for table in ["achievements", "achievement_facts", "achievement_activity", "achievement_enrollments"] {
        out.achievements += delete_learner_rows(tx, table, LEARNER, tenant, learner).await?;
    }
    Ok(out)
}
