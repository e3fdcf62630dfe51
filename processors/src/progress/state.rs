//! What the progress component (with its catalog) keeps in the state store: its migrations
//! (`migrations/`) and its erasure of a learner.

use lms_state::erasure::{LEARNER, delete_learner_rows};
use lms_state::schema::Migration;
use lms_state::{StoreError, Tx};

use crate::state::{ErasedState, Owner};

/// The component's part of the state store.
pub const STATE: Owner =
    Owner { name: "progress", migrations: MIGRATIONS, erase: |tx, tenant, learner| Box::pin(erase(tx, tenant, learner)) };

/// The catalog, progress facts, completions and the dedupe of video reports.
pub const MIGRATIONS: &[Migration] = &[
    Migration::new(2, "progress", "progress", include_str!("migrations/0002_progress.sql")),
    Migration::new(9, "progress revision", "progress", include_str!("migrations/0009_progress_revision.sql")),
    Migration::new(10, "catalog retirements", "progress", include_str!("migrations/0010_catalog_retirements.sql")),
];

/// Deletes the learner's progress facts and the dedupe rows of their video reports (the
/// learner column of `progress_seen` came with lms-state's migration 13). The catalog holds
/// nothing of learners.
async fn erase(tx: &mut Tx, tenant: &str, learner: &str) -> Result<ErasedState, StoreError> {
    let mut out = ErasedState::default();
    for table in ["progress_lessons", "progress_courses", "course_completions"] {
        out.progress += delete_learner_rows(tx, table, LEARNER, tenant, learner).await?;
    }
    out.dedupe = delete_learner_rows(tx, "progress_seen", LEARNER, tenant, learner).await?;
    Ok(out)
}
