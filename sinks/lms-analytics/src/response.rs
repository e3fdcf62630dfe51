//! The answers of the analytics endpoints, serialised exactly in the shape of CONTRACT.md.
//!
//! Series are sorted by bucket (then currency); buckets without data are omitted. A bucket is
//! the first UTC day of its day, week (Monday) or month, serialised `YYYY-MM-DD`. At the edges
//! of the requested range a week or month bucket counts only the days inside the range.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// `GET /v1/analytics/active-learners`: one item per bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActiveLearnersPoint {
    /// The first UTC day of the bucket's day, week (Monday) or month.
    pub bucket: NaiveDate,
    /// Distinct learners with at least one learning event in the bucket.
    pub active_learners: u64,
}

/// `GET /v1/analytics/enrollments`: one item per bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentsPoint {
    /// The first UTC day of the bucket's day, week (Monday) or month.
    pub bucket: NaiveDate,
    /// Distinct `enrollment.created` events in the bucket.
    pub enrollments: u64,
    /// Distinct `enrollment.dropped` events in the bucket.
    pub drops: u64,
}

/// `GET /v1/analytics/completions`: one item per bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompletionsPoint {
    /// The first UTC day of the bucket's day, week (Monday) or month.
    pub bucket: NaiveDate,
    /// Learners and courses completed in the bucket, by `completed_at`.
    pub completions: u64,
}

/// `GET /v1/analytics/courses/{course_id}/funnel`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Funnel {
    /// Learners currently enrolled (their latest enrollment event is `enrollment.created`) or
    /// who completed the course: the population of every other count.
    pub enrolled: u64,
    /// Of those, learners with at least one learning event in the course.
    pub started: u64,
    /// Of those, learners whose furthest `percent_complete` is at least 25.
    pub reached_25: u64,
    /// … at least 50.
    pub reached_50: u64,
    /// … at least 75.
    pub reached_75: u64,
    /// Of those, learners with a `course.completed` for the course.
    pub completed: u64,
}

/// `GET /v1/analytics/revenue`: one item per bucket and currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevenuePoint {
    /// The first UTC day of the bucket's day, week (Monday) or month.
    pub bucket: NaiveDate,
    /// The ISO 4217 currency of the amounts.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z]{3}$"))]
    pub currency: String,
    /// Sum of `payment.succeeded` amounts by their event time.
    pub gross_minor: i64,
    /// Sum of `payment.refunded` amounts by their event time, in the payment's currency.
    pub refunds_minor: i64,
    /// `gross_minor − refunds_minor`.
    pub net_minor: i64,
}

/// One 10-point bucket of the score histogram: `from_pct ≤ best < to_pct` (the last one
/// includes 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScoreBucket {
    /// Lower bound, included.
    pub from_pct: u32,
    /// Upper bound, excluded (included for the last bucket, 100).
    pub to_pct: u32,
    /// Learners whose best attempt falls in the bucket.
    pub count: u64,
}

/// `GET /v1/analytics/assessments/{assessment_id}/scores`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Scores {
    /// Distinct graded attempts (event ids).
    pub attempts: u64,
    /// Distinct learners with a graded attempt.
    pub learners: u64,
    /// Mean of the learners' best percentages, rounded to two decimals; `null` without
    /// learners.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub mean_pct: Option<f64>,
    /// Median of the best percentages (nearest rank),
    /// rounded to two decimals; `null` without learners.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub p50_pct: Option<f64>,
    /// 90th percentile of the best percentages (nearest rank), rounded to two decimals.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub p90_pct: Option<f64>,
    /// Ten 10-point buckets of best percentages, always all ten.
    pub histogram: Vec<ScoreBucket>,
}

/// One learner of `GET /v1/analytics/courses/{course_id}/at-risk`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AtRiskLearner {
    /// The learner.
    pub learner_id: String,
    /// The furthest `percent_complete` the learner reached in the course (0 without
    /// progress).
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub percent_complete: f64,
    /// The latest event time of the learner's learning events in the course; `null` when the
    /// learner has none (then the enrollment time was the reference).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_activity_at: Option<DateTime<Utc>>,
}
