//! Learner erasure in the state store, and the erasure processor.
//!
//! [`erase`] is the one erasure of a learner in the state store: lms-state records the learner
//! in the erased list and revokes their credentials ([`lms_state::erasure::record`]), then every
//! component that keeps state deletes its rows of the learner ([`crate::state::OWNERS`]), all in
//! the caller's transaction. `DELETE /v1/learners/{id}`, `lms learners erase` and the processor
//! below call it.
//!
//! The erasure processor applies every `learner.erased` of the erasure topic with [`erase`],
//! exactly once with its offsets like every store-backed processor.
//!
//! `DELETE /v1/learners/{id}` and `lms learners erase` already erase synchronously; this
//! processor is what makes the erasure durable beyond the store that took it: a state store
//! rebuilt from the topics (a new database, `lms replay` of every group) learns every erasure
//! again from the compacted erasure topic, and removes whatever a replay wrote of the learner
//! before it got there. Every other processor drops erased learners' events where they enter
//! processing ([`crate::stateful::admitted`]).

use async_trait::async_trait;
use lms_bus::Record;
use lms_events::EventData;
use lms_state::sql::to_us;
use lms_state::{Backend, Store, StoreError, Tx};

use crate::state::{Erased, ErasedState, OWNERS};
use crate::stateful::{Applied, Stage, StageError};

/// Erases `learner` of `tenant` in `tx` (see the module documentation); idempotent. `now_us`
/// is the time recorded for a first erasure.
pub async fn erase(tx: &mut Tx, backend: Backend, tenant: &str, learner: &str, now_us: i64) -> Result<Erased, StoreError> {
    let recorded = lms_state::erasure::record(tx, backend, tenant, learner, now_us).await?;
    let mut state = ErasedState { credentials_revoked: recorded.credentials_revoked, ..ErasedState::default() };
    for owner in OWNERS {
        state += (owner.erase)(tx, tenant, learner).await?;
    }
    Ok(Erased { already_erased: recorded.already_erased, erased_at_us: recorded.erased_at_us, state })
}

/// The erasure stage.
pub struct Erasure;

#[async_trait]
impl Stage for Erasure {
    fn name(&self) -> &'static str {
        "erasure"
    }

    async fn apply(&self, store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Applied, StageError> {
        for r in records {
            if let EventData::LearnerErased(d) = &r.event.data {
                let erased = erase(tx, store.backend(), &r.event.tenant, &d.learner_id, to_us(r.event.time)).await?;
                tracing::info!(tenant = %r.event.tenant, event_id = %r.event.id, already = erased.already_erased, "learner erased in the state store");
            }
        }
        Ok(Applied::default())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[tokio::test]
    async fn erasure_is_recorded_once_counts_each_component_and_is_found_per_tenant() {
        let store = crate::state::open_store("sqlite::memory:", 1).await.expect("open");
        let mut tx = store.begin().await.expect("begin");
        for sql in [
            "INSERT INTO progress_lessons (tenant, learner_id, course_id, lesson_id, first_completed_at_us) VALUES ('t', 'l1', 'c', 'x', 1)",
            "INSERT INTO achievements (tenant, learner_id, achievement_id, course_id, title, unlocked_at_us) VALUES ('t', 'l1', 'a', '', 'A', 1)",
            "INSERT INTO learner_preferences (tenant, learner_id, preferences, updated_at_us) VALUES ('t', 'l1', '{}', 1)",
            "INSERT INTO learner_preferences (tenant, learner_id, preferences, updated_at_us) VALUES ('u', 'l1', '{}', 1)",
        ] {
            sqlx::query(sql).execute(&mut *tx).await.expect("insert");
        }
        let first = erase(&mut tx, store.backend(), "t", "l1", 5).await.expect("erase");
        let state = ErasedState { progress: 1, achievements: 1, preferences: 1, ..ErasedState::default() };
        assert_eq!(first, Erased { already_erased: false, erased_at_us: 5, state });
        let again = erase(&mut tx, store.backend(), "t", "l1", 9).await.expect("erase again");
        assert_eq!(
            again,
            Erased { already_erased: true, erased_at_us: 5, state: ErasedState::default() },
            "the first erasure's time is kept"
        );
        lms_state::erasure::guard(&mut tx, store.backend()).await.expect("guard");
        let found = lms_state::erasure::erased(&mut tx, [("t", "l1"), ("t", "l2"), ("u", "l1")]).await.expect("erased");
        assert_eq!(found, HashSet::from([("t".to_owned(), "l1".to_owned())]));
        tx.commit().await.expect("commit");
    }

    /// Every table of the whole schema that holds a learner's rows (a `learner_id` column, and
    /// the attempts, found through the inbox) keeps none after [`erase`]: a component that adds
    /// such a table without erasing it fails here. Tables are read from the migrated schema,
    /// one row per table written with the learner and placeholder values.
    #[tokio::test]
    async fn erasure_leaves_no_row_of_the_learner_in_any_table() {
        use sqlx::Row as _;
        let store = crate::state::open_store("sqlite::memory:", 1).await.expect("open");
        let tables: Vec<String> =
            sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' AND name <> '_sqlx_migrations'")
                .fetch_all(store.pool())
                .await
                .expect("tables")
                .iter()
                .map(|r| r.get(0))
                .collect();
        let mut learner_tables = Vec::new();
        for table in &tables {
            let columns =
                sqlx::query("SELECT name, type FROM pragma_table_info($1)").bind(table).fetch_all(store.pool()).await.expect("columns");
            let (mut names, mut values) = (Vec::new(), Vec::new());
            for c in &columns {
                let (name, kind): (String, String) = (c.get(0), c.get(1));
                values.push(match name.as_str() {
                    "tenant" => "'t'".to_owned(),
                    "learner_id" => "'l1'".to_owned(),
                    _ if kind.to_uppercase().contains("INT")
                        || kind.to_uppercase().contains("REAL")
                        || kind.to_uppercase().contains("DOUBLE") =>
                    {
                        "1".to_owned()
                    }
                    _ => "'v'".to_owned(),
                });
                names.push(name);
            }
            if names.iter().any(|n| n == "learner_id") && table != "erased_learners" {
                learner_tables.push(table.clone());
            }
            let sql = format!("INSERT INTO {table} ({}) VALUES ({})", names.join(", "), values.join(", "));
            sqlx::query(&sql).execute(store.pool()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        assert!(learner_tables.len() >= 15 && learner_tables.contains(&"learner_preferences".to_owned()), "{learner_tables:?}");
        let mut tx = store.begin().await.expect("begin");
        let erased = erase(&mut tx, store.backend(), "t", "l1", 5).await.expect("erase");
        tx.commit().await.expect("commit");
        for table in learner_tables.iter().chain([&"notification_attempts".to_owned()]) {
            let sql = if table == "notification_attempts" {
                format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table}")
            } else {
                format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table} WHERE tenant = 't' AND learner_id = 'l1'")
            };
            let left: i64 = sqlx::query(&sql).fetch_one(store.pool()).await.expect("count").get(0);
            assert_eq!(left, 0, "{table} keeps rows of the erased learner");
        }
        // Every row written was counted under one kind: all learner tables but the revoked
        // credential, plus the attempts.
        let s = erased.state;
        let counted = s.preferences + s.notifications + s.deliveries + s.progress + s.achievements + s.dedupe;
        assert_eq!((counted, s.credentials_revoked), (learner_tables.len() as u64, 1), "{erased:?}");
    }
}
