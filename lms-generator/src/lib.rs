//! A synthetic cohort of lms-pipeline events, deterministic for a seed.
//!
//! Tenants publish courses (modules of lessons, some with a later second version, one
//! retired late); learners arrive over the weeks of the period, more of them towards its
//! end, and enroll in one to three courses (after a payment for paid courses; some payments
//! fail). They study in sessions on days drawn from a weekly rhythm (quieter weekends) at
//! hours of a daily rhythm (an evening peak): lessons are started, their videos watched in
//! `video.progressed` reports about a minute apart, completed; each module ends with a quiz
//! (`assessment.graded`, scores around the learner's ability, retried after a fail). After
//! every lesson a learner may stop for good — most stop early — and some of those formally
//! drop the course later, after a refund when they paid and did little.
//!
//! Every event is valid client input ([`lms_events::parse_client_event`] accepts it for
//! its tenant) and the stream is in time order, all of it within the period ending at
//! [`CohortConfig::now`]. The same configuration yields the same events, ids included.
//!
//! - [`Cohort`]: the iterator of a period's events, with a running [`Summary`].
//! - [`Live`]: endless emission at a target rate with event times of the moment, for a
//!   live dashboard; [`live`] drives a sink with it.

mod catalog;
mod cohort;
mod journey;
mod live;
mod rhythm;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

pub use catalog::{Course, CourseVersion, Lesson, Tenant, tenant_name};
pub use cohort::{Cohort, Summary};
pub use live::{Live, live};

/// The largest number of tenants, of courses per tenant, and of weeks.
pub const MAX_TENANTS: usize = 64;
/// See [`MAX_TENANTS`].
pub const MAX_COURSES: usize = 64;
/// See [`MAX_TENANTS`].
pub const MAX_WEEKS: u32 = 156;
/// The largest number of learners per tenant.
pub const MAX_LEARNERS: usize = 1_000_000;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortConfig {
    /// The seed: the same configuration gives the same events.
    pub seed: u64,
    /// How many tenants (organisations), each with its own catalog and learners; ignored
    /// when `tenant_names` is given.
    pub tenants: usize,
    /// Tenant names to use instead of the built-in ones (`acme`, `globex`, …).
    #[serde(default)]
    pub tenant_names: Vec<String>,
    /// Courses per tenant.
    pub courses: usize,
    /// Learners per tenant.
    pub learners: usize,
    /// The length of the period in weeks; it ends at `now`.
    pub weeks: u32,
    /// The end of the period: no event is later.
    pub now: DateTime<Utc>,
    /// Put before each learner's number to make its id (`learner-00042`). Learners of two
    /// cohorts with different prefixes are different people.
    pub learner_prefix: String,
}

impl CohortConfig {
    /// One tenant, six courses, 300 learners over eight weeks ending now.
    pub fn new(seed: u64) -> CohortConfig {
        CohortConfig {
            seed,
            tenants: 1,
            tenant_names: Vec::new(),
            courses: 6,
            learners: 300,
            weeks: 8,
            now: rhythm::millis(Utc::now()),
            learner_prefix: "learner-".to_owned(),
        }
    }

    /// The start of the period.
    pub fn start(&self) -> DateTime<Utc> {
        self.now - Duration::weeks(i64::from(self.weeks))
    }

    /// The tenant names the cohort uses.
    pub fn tenant_names(&self) -> Vec<String> {
        if self.tenant_names.is_empty() { (0..self.tenants).map(tenant_name).collect() } else { self.tenant_names.clone() }
    }

    /// Checks the bounds of every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tenants = if self.tenant_names.is_empty() { self.tenants } else { self.tenant_names.len() };
        check("tenants", tenants, 1, MAX_TENANTS)?;
        check("courses", self.courses, 1, MAX_COURSES)?;
        check("learners", self.learners, 0, MAX_LEARNERS)?;
        check("weeks", self.weeks as usize, 1, MAX_WEEKS as usize)?;
        for name in &self.tenant_names {
            if name.is_empty() || name.len() > 128 {
                return Err(ConfigError::TenantName(name.clone()));
            }
        }
        let mut sorted = self.tenant_names.clone();
        sorted.sort();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::TenantName(w[0].clone()));
        }
        if self.learner_prefix.len() > 100 {
            return Err(ConfigError::LearnerPrefix);
        }
        Ok(())
    }
}

fn check(option: &'static str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange { option, value, min, max });
    }
    Ok(())
}

/// Why a configuration cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A count is outside its bounds.
    #[error("{option} must be between {min} and {max}, not {value}")]
    OutOfRange {
        /// The option.
        option: &'static str,
        /// The value given.
        value: usize,
        /// The smallest value accepted.
        min: usize,
        /// The largest value accepted.
        max: usize,
    },
    /// A tenant name is empty, longer than 128 characters or given twice.
    #[error("tenant name {0:?} is empty, longer than 128 characters or repeated")]
    TenantName(String),
    /// The learner prefix is longer than 100 characters.
    #[error("the learner prefix must be at most 100 characters")]
    LearnerPrefix,
    /// The live rate is not a positive number.
    #[error("the live rate must be a positive number of events per second, not {0}")]
    Rate(String),
}

#[cfg(test)]
mod tests;
