//! The interface both analytics stores implement.

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use lms_events::Event;

use crate::query::{AtRiskParams, FunnelParams, RevenueParams, ScoresParams, SeriesParams};
use crate::response::{ActiveLearnersPoint, AtRiskLearner, CompletionsPoint, EnrollmentsPoint, Funnel, RevenuePoint, Scores};

/// Why a store operation failed. Every variant is worth retrying except
/// [`StoreError::Schema`]; the sink retries them all (see [`crate::AnalyticsSink`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// ClickHouse refused a request or could not be reached. Shown with its causes (the
    /// HTTP client says only "client error (Connect)"; its source says why: refused,
    /// an untrusted certificate, ...).
    #[error("clickhouse: {}", with_causes(.0))]
    ClickHouse(#[from] clickhouse::error::Error),
    /// DataFusion or Arrow failed.
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow failed (building or converting record batches).
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Reading or writing the twin's files failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The stored schema is not one this version can use (for example written by a newer
    /// version).
    #[error("schema: {0}")]
    Schema(String),
    /// A background task of the store failed.
    #[error("internal: {0}")]
    Internal(String),
    /// The store's configuration cannot work (an unreadable CA file, for example).
    #[error("configuration: {0}")]
    Config(String),
}

/// What [`AnalyticsStore::migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call, in order.
    pub applied: Vec<u32>,
    /// The schema version now in place.
    pub version: u32,
    /// Optional features skipped because the server is too old, one sentence each.
    pub skipped: Vec<String>,
}

/// An analytics store: the rollups behind the analytics endpoints, and their queries.
///
/// Writing is idempotent by event id: inserting the same events again (a redelivered batch, a
/// replay of the topics) changes no answer. Answers follow CONTRACT.md; see the crate
/// documentation for how each store keeps that promise.
#[async_trait]
pub trait AnalyticsStore: Send + Sync + 'static {
    /// A short name of the implementation (`clickhouse`, `parquet`) for logs.
    fn kind(&self) -> &'static str;

    /// Applies the schema migrations not applied yet, in order, and records them. Safe to run
    /// again and from several processes at once.
    async fn migrate(&self) -> Result<MigrationReport, StoreError>;

    /// Checks that the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Writes the rows of `events` to every table. Returns once they are durable and visible
    /// to queries.
    async fn insert(&self, events: &[&Event]) -> Result<(), StoreError>;

    /// Records `learner` of `tenant` as erased, then removes the learner's rows from every
    /// table that names learners, and returns how many rows each table held. Payments are
    /// kept: they carry no learner in the analytics store, and revenue keeps its totals
    /// (CONTRACT.md, "Learner data lifecycle"). Idempotent. The record comes first, so a
    /// writer that checks [`AnalyticsStore::erased`] after writing (the sink does) either
    /// sees the erasure or wrote before the removal began.
    async fn erase(&self, tenant: &str, learner: &str) -> Result<BTreeMap<String, u64>, StoreError>;

    /// Which of `learners` (tenant, learner id) are erased.
    async fn erased(&self, learners: &[(&str, &str)]) -> Result<HashSet<(String, String)>, StoreError>;

    /// `GET /v1/analytics/active-learners`.
    async fn active_learners(&self, p: &SeriesParams) -> Result<Vec<ActiveLearnersPoint>, StoreError>;

    /// `GET /v1/analytics/enrollments`.
    async fn enrollments(&self, p: &SeriesParams) -> Result<Vec<EnrollmentsPoint>, StoreError>;

    /// `GET /v1/analytics/completions`.
    async fn completions(&self, p: &SeriesParams) -> Result<Vec<CompletionsPoint>, StoreError>;

    /// `GET /v1/analytics/courses/{course_id}/funnel`.
    async fn funnel(&self, p: &FunnelParams) -> Result<Funnel, StoreError>;

    /// `GET /v1/analytics/revenue`.
    async fn revenue(&self, p: &RevenueParams) -> Result<Vec<RevenuePoint>, StoreError>;

    /// `GET /v1/analytics/assessments/{assessment_id}/scores`.
    async fn scores(&self, p: &ScoresParams) -> Result<Scores, StoreError>;

    /// `GET /v1/analytics/courses/{course_id}/at-risk`.
    async fn at_risk(&self, p: &AtRiskParams) -> Result<Vec<AtRiskLearner>, StoreError>;
}

/// An error and its sources, `: `-separated, leaving out a source already in the text.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = s.source();
    }
    text
}
