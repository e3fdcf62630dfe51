//! The typed queries the analytics stores answer. The HTTP parameters they come from are
//! parsed by the API (`api::analytics::params`); a value here is always valid: a
//! [`SeriesParams`] has `from ≤ to` and a known granularity, so the stores never check again.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde::Serialize;

/// The size of series buckets. Buckets are UTC days; weeks start on Monday; months on the
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One bucket per UTC day.
    Day,
    /// One bucket per ISO week, starting on Monday.
    Week,
    /// One bucket per calendar month.
    Month,
}

impl Granularity {
    /// The wire name: `day`, `week` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
        }
    }

    /// The first day of the bucket holding `day`.
    pub fn bucket_start(self, day: NaiveDate) -> NaiveDate {
        match self {
            Granularity::Day => day,
            Granularity::Week => day - Duration::days(i64::from(day.weekday().num_days_from_monday())),
            Granularity::Month => day.with_day(1).unwrap_or(day),
        }
    }
}

impl FromStr for Granularity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "day" => Ok(Granularity::Day),
            "week" => Ok(Granularity::Week),
            "month" => Ok(Granularity::Month),
            other => Err(format!("unknown granularity {other:?}; expected one of day, week, month")),
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A date range and bucketing shared by the series endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesParams {
    /// The tenant whose events are counted (from the caller's token).
    pub tenant: String,
    /// The first UTC day counted.
    pub from: NaiveDate,
    /// The last UTC day counted (inclusive); never before `from`.
    pub to: NaiveDate,
    /// The bucket size.
    pub granularity: Granularity,
    /// Count only this course.
    pub course_id: Option<String>,
}

/// `GET /v1/analytics/revenue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevenueParams {
    /// Range, buckets and course (a refund counts for the course of its payment).
    pub series: SeriesParams,
    /// Only this ISO 4217 currency; all currencies (one item per bucket and currency) when
    /// absent.
    pub currency: Option<String>,
}

/// `GET /v1/analytics/courses/{course_id}/funnel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelParams {
    /// The tenant.
    pub tenant: String,
    /// The course.
    pub course_id: String,
}

/// `GET /v1/analytics/assessments/{assessment_id}/scores`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoresParams {
    /// The tenant.
    pub tenant: String,
    /// The assessment.
    pub assessment_id: String,
    /// Only attempts whose event time falls in these UTC days (`from` and `to` together, or
    /// neither: all attempts).
    pub range: Option<(NaiveDate, NaiveDate)>,
    /// Only attempts in this course.
    pub course_id: Option<String>,
}

/// `GET /v1/analytics/courses/{course_id}/at-risk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtRiskParams {
    /// The tenant.
    pub tenant: String,
    /// The course.
    pub course_id: String,
    /// A learner is at risk when their reference time is more than this many days before
    /// `as_of`.
    pub inactive_days: u32,
    /// The reference time (default: now). It only moves the threshold; events after it still
    /// count.
    pub as_of: DateTime<Utc>,
    /// The most learners listed (oldest first).
    pub limit: u32,
}

impl AtRiskParams {
    /// Learners whose reference time is strictly before this are at risk.
    pub fn threshold(&self) -> DateTime<Utc> {
        self.as_of - Duration::days(i64::from(self.inactive_days))
    }
}
