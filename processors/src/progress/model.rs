//! The figures of a learner's progress in one course, computed from order-insensitive
//! facts and the catalog: exactly the meanings of CONTRACT.md ("Meanings").

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use lms_events::data::{ProgressStatus, ProgressUpdated};
use serde::Serialize;

/// Each `video.progressed` report counts at most this much watching time.
pub const WATCHED_CAP_S: f64 = 300.0;

/// The watching time a report adds, in milliseconds: capped, then rounded to the
/// millisecond so that sums are exact integers (the result cannot depend on the order
/// in which reports are added).
pub fn watched_ms(watched_s: f64) -> i64 {
    (watched_s.clamp(0.0, WATCHED_CAP_S) * 1000.0).round() as i64
}

/// The current version of a course in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogCourse {
    /// Highest published version.
    pub version: u32,
    /// Its lessons, in course order, without repeats.
    pub lessons: Vec<String>,
}

/// What is known of one learner in one course.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CourseFacts {
    /// Completed lessons (of any version) with the time each was first completed.
    pub lessons: HashMap<String, DateTime<Utc>>,
    /// Sum of the capped watching time, ms.
    pub time_spent_ms: i64,
    /// Latest learning event time.
    pub last_activity_at: Option<DateTime<Utc>>,
}

/// One entry of `GET /v1/learners/{id}/progress`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = LearnerProgress))]
pub struct ProgressView {
    /// Course.
    pub course_id: String,
    /// `not_started` | `in_progress` | `completed`.
    pub status: ProgressStatus,
    /// Distinct completed lessons of the current version.
    pub lessons_completed: u32,
    /// Lessons of the current version (0 while the course is not in the catalog).
    pub lessons_total: u32,
    /// 0–100, one decimal.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub percent_complete: f64,
    /// Sum of `watched_s`, each report capped at 300 s.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub time_spent_s: f64,
    /// Latest learning event time.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_activity_at: Option<DateTime<Utc>>,
    /// Event time at which the last missing lesson was first completed.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub completed_at: Option<DateTime<Utc>>,
    /// Catalog version the figures follow (0 while the course is not in the catalog).
    #[serde(skip)]
    pub course_version: u32,
}

/// Computes the progress figures.
pub fn compute(course_id: &str, facts: &CourseFacts, catalog: Option<&CatalogCourse>) -> ProgressView {
    let (version, lessons): (u32, &[String]) = catalog.map_or((0, &[]), |c| (c.version, c.lessons.as_slice()));
    let completed_times: Vec<DateTime<Utc>> = lessons.iter().filter_map(|l| facts.lessons.get(l).copied()).collect();
    let total = lessons.len() as u32;
    let done = completed_times.len() as u32;
    let complete = total > 0 && done == total;
    let percent = if total == 0 { 0.0 } else { (1000.0 * f64::from(done) / f64::from(total)).round() / 10.0 };
    let status = if complete {
        ProgressStatus::Completed
    } else if facts.last_activity_at.is_some() {
        ProgressStatus::InProgress
    } else {
        ProgressStatus::NotStarted
    };
    ProgressView {
        course_id: course_id.to_owned(),
        status,
        lessons_completed: done,
        lessons_total: total,
        percent_complete: percent,
        time_spent_s: facts.time_spent_ms as f64 / 1000.0,
        last_activity_at: facts.last_activity_at,
        completed_at: if complete { completed_times.into_iter().max() } else { None },
        course_version: version,
    }
}

impl ProgressView {
    /// The `progress.updated` data of these figures, at `revision` (see
    /// [`ProgressUpdated::revision`]).
    pub fn to_event_data(&self, learner_id: &str, revision: u64) -> ProgressUpdated {
        ProgressUpdated {
            learner_id: learner_id.to_owned(),
            course_id: self.course_id.clone(),
            course_version: self.course_version,
            lessons_completed: self.lessons_completed,
            lessons_total: self.lessons_total,
            percent_complete: self.percent_complete,
            status: self.status,
            time_spent_s: self.time_spent_s,
            last_activity_at: self.last_activity_at,
            completed_at: self.completed_at,
            revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn figures_follow_the_current_version() {
        let catalog = CatalogCourse { version: 2, lessons: vec!["a".into(), "b".into(), "c".into()] };
        let mut facts = CourseFacts::default();
        facts.lessons.insert("a".into(), t("2026-01-01T10:00:00Z"));
        facts.lessons.insert("old".into(), t("2026-01-01T09:00:00Z"));
        facts.last_activity_at = Some(t("2026-01-01T10:00:00Z"));
        facts.time_spent_ms = watched_ms(400.0) + watched_ms(12.3456);
        let v = compute("c1", &facts, Some(&catalog));
        assert_eq!((v.lessons_completed, v.lessons_total, v.percent_complete), (1, 3, 33.3));
        assert_eq!(v.status, ProgressStatus::InProgress);
        assert_eq!(v.time_spent_s, 312.346);
        assert_eq!(v.completed_at, None);

        facts.lessons.insert("c".into(), t("2026-01-03T10:00:00Z"));
        facts.lessons.insert("b".into(), t("2026-01-02T10:00:00Z"));
        let v = compute("c1", &facts, Some(&catalog));
        assert_eq!(v.status, ProgressStatus::Completed);
        assert_eq!(v.percent_complete, 100.0);
        assert_eq!(v.completed_at, Some(t("2026-01-03T10:00:00Z")));
    }

    #[test]
    fn unknown_courses_and_enrolment_only() {
        let v = compute("c1", &CourseFacts::default(), None);
        assert_eq!(v.status, ProgressStatus::NotStarted);
        assert_eq!((v.lessons_total, v.percent_complete), (0, 0.0));
    }
}
