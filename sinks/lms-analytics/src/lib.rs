//! The analytics side of lms-pipeline.
//!
//! - [`AnalyticsSink`]: a processor (consumer group `lms-analytics`) writing every event of
//!   every domain to an [`AnalyticsStore`], one insert per table per batch.
//! - [`AnalyticsStore`]: the rollups behind the analytics endpoints of CONTRACT.md and their
//!   queries, with two implementations: [`ClickHouseStore`] and the embedded twin
//!   [`ParquetStore`] (Arrow record batches in Parquet files, queried with DataFusion).
//! - [`query`]: the typed queries the stores answer, and [`response`]: their answers in the
//!   contract's shape (the API parses the HTTP parameters into queries and serves answers).
//!
//! # Idempotence: why a replay or a redelivered batch never double-counts
//!
//! The runner delivers every event at least once (a batch whose commit was lost is processed
//! again; `lms` may replay the topics from the beginning). Neither store deduplicates on
//! write. Instead, every table holds rows that are either **keyed by the event id** or a
//! **monotone summary of their key**, and every query reads them only through aggregates that
//! a repeated row cannot change:
//!
//! | table | one row per | read with |
//! |---|---|---|
//! | `activity_daily` | tenant, day, course, learner | distinct learners |
//! | `course_activity` | tenant, course, learner (latest learning event) | `max(last_us)` |
//! | `enrollments` | event id | distinct ids; `max(order_key)` per learner = the latest event |
//! | `learner_progress` | tenant, course, learner, revision (one `progress.updated`) | the row of `max(revision)`: percent, completed, completion day |
//! | `payments` | event id | `GROUP BY id` before summing; refunds joined to their payment |
//! | `attempts` | event id | distinct ids; `max(pct)` per learner = the best attempt |
//!
//! Writing a row twice therefore adds a set element that is already there, a value that does
//! not move a max/min, or a copy of the row of its revision. This holds whatever the physical
//! state of the store:
//! - In ClickHouse the tables are `ReplacingMergeTree`s on exactly those keys (with a version
//!   column keeping the latest activity and the largest revision of the progress), so
//!   merges shrink duplicates away; but no answer waits for a merge or needs `FINAL`, which on
//!   ClickHouse 18.16 would serialise reads. The raw `events` table (`ORDER BY (tenant, id)`)
//!   keeps every event for new rollups and ad-hoc SQL.
//! - In the twin, each insert appends one Parquet file per table and compaction rewrites a
//!   table's files into one, applying the same reduction; a query racing a compaction may see
//!   both the old files and the new one, which, by the same argument, changes nothing.
//!
//! So the sink needs no transaction across its tables: a batch that fails half-way is retried
//! whole, and the rows written by the failed attempt are harmless duplicates. Offsets are
//! committed by the runner after `process` returned, i.e. after the store acknowledged every
//! table's insert. Events with the same id are assumed to be the same event (the contract's
//! idempotency key); where two copies could differ, reads pick deterministically (`min`).
//!
//! # Progress and completions follow the learner's current figures
//!
//! Completions, the funnel and the at-risk list read the figures of the `progress.updated`
//! with the largest revision per learner and course (the progress processor numbers its
//! recomputations, [`lms_events::data::ProgressUpdated::revision`]), not the furthest percent
//! or the first `course.completed` ever seen: a course version that arrives after the
//! activity may add a lesson and take a completion back, and the analytics then follow the
//! learner's own progress (CONTRACT.md, "Meanings"). `course.completed`, emitted at most once,
//! is kept in `events` only.
//!
//! Mapping one event to its rows happens once, in [`rows`], for both stores; the last step of
//! the funnel, the at-risk list and the score statistics happens once, in [`compute`], over
//! small per-learner summaries the stores fetch. Only the SQL differs between the stores.

pub mod clickhouse;
pub mod compute;
pub mod parquet;
pub mod query;
pub mod response;
pub mod rows;
mod sink;
mod store;

pub use crate::clickhouse::{ClickHouseCompression, ClickHouseConfig, ClickHouseStore};
pub use crate::parquet::{ParquetConfig, ParquetStore};
pub use crate::query::{AtRiskParams, FunnelParams, Granularity, RevenueParams, ScoresParams, SeriesParams};
pub use crate::response::{
    ActiveLearnersPoint, AtRiskLearner, CompletionsPoint, EnrollmentsPoint, Funnel, RevenuePoint, ScoreBucket, Scores,
};
pub use crate::sink::{AnalyticsSink, SINK_DOMAINS, anonymized_payment};
pub use crate::store::{AnalyticsStore, MigrationReport, StoreError};

use std::sync::Arc;

/// Which analytics store to use: the `analytics` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "store", rename_all = "snake_case")]
pub enum AnalyticsConfig {
    /// ClickHouse (`store: clickhouse`, with the fields of [`ClickHouseConfig`]).
    Clickhouse(ClickHouseConfig),
    /// The embedded twin (`store: parquet`, with the fields of [`ParquetConfig`]).
    Parquet(ParquetConfig),
}

impl AnalyticsConfig {
    /// Opens the configured store (the twin reads its directory; ClickHouse connects lazily).
    pub async fn open(&self) -> Result<Arc<dyn AnalyticsStore>, StoreError> {
        Ok(match self {
            AnalyticsConfig::Clickhouse(c) => Arc::new(ClickHouseStore::new(c.clone())?),
            AnalyticsConfig::Parquet(c) => Arc::new(ParquetStore::open(c.clone()).await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_selects_the_store() {
        let ch: AnalyticsConfig = serde_json::from_value(serde_json::json!({
            "store": "clickhouse", "url": "http://127.0.0.1:8123", "database": "a", "request_timeout_ms": 5000
        }))
        .expect("clickhouse config");
        let AnalyticsConfig::Clickhouse(c) = ch else { panic!("not clickhouse: {ch:?}") };
        assert_eq!((c.database.as_str(), c.request_timeout_ms, c.user), ("a", 5000, None));
        let pq: AnalyticsConfig =
            serde_json::from_value(serde_json::json!({"store": "parquet", "dir": "/var/lib/lms/analytics"})).expect("parquet");
        assert_eq!(pq, AnalyticsConfig::Parquet(ParquetConfig::new("/var/lib/lms/analytics")));
        let defaults: AnalyticsConfig =
            serde_json::from_value(serde_json::json!({"store": "clickhouse", "url": "http://ch:8123"})).expect("defaults");
        assert_eq!(defaults, AnalyticsConfig::Clickhouse(ClickHouseConfig::new("http://ch:8123", "lms_analytics")));
        let typo = serde_json::from_value::<AnalyticsConfig>(serde_json::json!({"store": "parquet", "dir": "/x", "compact_after": 3}));
        assert!(typo.is_err(), "unknown fields are refused");
        assert!(serde_json::from_value::<AnalyticsConfig>(serde_json::json!({"store": "duckdb"})).is_err());
    }
}
