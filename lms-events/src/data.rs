//! The typed `data` payload of every event type.
//!
//! Field names follow `docs/CONTRACT.md` exactly. Every identifier is a non-empty string of at
//! most 128 characters. The structures deliberately do not deny unknown fields: decoding from
//! the topics stays lenient so that an older processor can read events written by a newer
//! producer. Client input is held to the strict rules by [`crate::input`], which validates the
//! raw JSON against the generated input schema before it is turned into these types.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A course version was published; the highest version of a course wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CoursePublished {
    /// The course that was published.
    #[schemars(length(min = 1, max = 128))]
    pub course_id: String,
    /// The human-readable course title.
    #[schemars(length(min = 1, max = 512))]
    pub title: String,
    /// The version of the course, starting at 1; a higher version replaces a lower one.
    #[schemars(range(min = 1))]
    pub version: u32,
    /// The modules of the course in order; at least one, each with at least one lesson.
    #[schemars(length(min = 1))]
    pub modules: Vec<Module>,
}

impl CoursePublished {
    /// Returns the lesson ids of every module, in course order.
    ///
    /// Events accepted through [`crate::parse_client_event`] never repeat a lesson id.
    pub fn lesson_ids(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().flat_map(|module| module.lessons.iter().map(String::as_str))
    }

    /// Returns the number of distinct lessons in the course, the `lessons_total` of progress.
    ///
    /// A lesson id that is (invalidly) repeated is counted once; the count saturates at
    /// `u32::MAX`.
    pub fn lessons_total(&self) -> u32 {
        let distinct: HashSet<&str> = self.lesson_ids().collect();
        u32::try_from(distinct.len()).unwrap_or(u32::MAX)
    }
}

/// One module of a published course.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Module {
    /// The module's id, unique within the course.
    #[schemars(length(min = 1, max = 128))]
    pub module_id: String,
    /// The lesson ids of the module in order; at least one, unique across the whole course.
    #[schemars(length(min = 1), inner(length(min = 1, max = 128)))]
    pub lessons: Vec<String>,
}

/// A course was retired; it takes no new enrollments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CourseRetired {
    /// The course that was retired.
    #[schemars(length(min = 1, max = 128))]
    pub course_id: String,
}

/// How a learner came to be enrolled in a course.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EnrollmentSource {
    /// The learner enrolled themself.
    #[serde(rename = "self")]
    SelfService,
    /// An administrator enrolled the learner.
    #[serde(rename = "admin")]
    Admin,
    /// The enrollment followed a purchase.
    #[serde(rename = "purchase")]
    Purchase,
}

impl EnrollmentSource {
    /// Returns the wire name: `self`, `admin` or `purchase`.
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentSource::SelfService => "self",
            EnrollmentSource::Admin => "admin",
            EnrollmentSource::Purchase => "purchase",
        }
    }
}

/// A learner was enrolled in a course.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnrollmentCreated {
    /// The enrolled learner.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// The course the learner was enrolled in.
    #[schemars(length(min = 1, max = 128))]
    pub course_id: String,
    /// How the enrollment came about.
    pub source: EnrollmentSource,
}

/// A learner's enrollment in a course was dropped; the learner's progress is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnrollmentDropped {
    /// The learner whose enrollment was dropped.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// The course the learner left.
    #[schemars(length(min = 1, max = 128))]
    pub course_id: String,
}

/// A learner's activity on one lesson: the data of `lesson.started` and `lesson.completed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LessonRef {
    /// The learner.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// The course the lesson belongs to.
    #[schemars(length(min = 1, max = 128))]
    pub course_id: String,
    /// The lesson.
    #[schemars(length(min = 1, max = 128))]
    pub lesson_id: String,
}

/// A video player's progress report for a lesson video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VideoProgressed {
    /// The learner watching.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// The course the lesson belongs to.
    #[schemars(length(min = 1, max = 128))]
    pub course_id: String,
    /// The lesson whose video is watched.
    #[schemars(length(min = 1, max = 128))]
    pub lesson_id: String,
    /// The playback position in seconds.
    #[schemars(range(min = 0))]
    pub position_s: f64,
    /// The length of the video in seconds; greater than zero.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub duration_s: f64,
    /// The seconds watched since the previous report (each report counts at most 300 s).
    #[schemars(range(min = 0))]
    pub watched_s: f64,
}

/// An assessment attempt was graded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AssessmentGraded {
    /// The learner who made the attempt.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// The course the assessment belongs to.
    #[schemars(length(min = 1, max = 128))]
    pub course_id: String,
    /// The assessment.
    #[schemars(length(min = 1, max = 128))]
    pub assessment_id: String,
    /// The score reached, from 0 up to `max_score`.
    #[schemars(range(min = 0))]
    pub score: f64,
    /// The highest possible score; greater than zero.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_score: f64,
    /// The attempt number, starting at 1.
    #[schemars(range(min = 1))]
    pub attempt: u32,
}

impl AssessmentGraded {
    /// Returns the score as a percentage of `max_score` (0 to 100 for valid events).
    pub fn percent(&self) -> f64 {
        100.0 * self.score / self.max_score
    }
}

/// The largest amount accepted, 2^53 − 1: the largest integer every JSON reader keeps exact
/// (RFC 7493, I-JSON).
pub const MAX_AMOUNT_MINOR: i64 = 9_007_199_254_740_991;

/// A payment succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentSucceeded {
    /// The payment provider's payment id.
    #[schemars(length(min = 1, max = 128))]
    pub payment_id: String,
    /// The paying learner.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// The course bought, if the payment was for a course.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub course_id: Option<String>,
    /// The amount in minor units of `currency` (cents for EUR); greater than zero.
    #[schemars(range(min = 1, max = 9_007_199_254_740_991i64))]
    pub amount_minor: i64,
    /// The ISO 4217 currency code: three uppercase letters.
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
}

/// A payment was refunded, in part or in full. The refund carries no learner id; it is matched
/// to its payment by `payment_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    /// The refunded payment.
    #[schemars(length(min = 1, max = 128))]
    pub payment_id: String,
    /// The refunded amount in minor units of `currency`; greater than zero.
    #[schemars(range(min = 1, max = 9_007_199_254_740_991i64))]
    pub amount_minor: i64,
    /// The ISO 4217 currency code: three uppercase letters.
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
}

/// A payment failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentFailed {
    /// The payment provider's payment id.
    #[schemars(length(min = 1, max = 128))]
    pub payment_id: String,
    /// The learner whose payment failed.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// Why the payment failed, as the provider reported it.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
}

/// Where a learner stands in a course.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProgressStatus {
    /// Enrolled, but no learning event in the course yet.
    NotStarted,
    /// At least one learning event in the course, not every lesson completed.
    InProgress,
    /// Every lesson of the course's highest published version is completed.
    Completed,
}

impl ProgressStatus {
    /// Returns the wire name: `not_started`, `in_progress` or `completed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProgressStatus::NotStarted => "not_started",
            ProgressStatus::InProgress => "in_progress",
            ProgressStatus::Completed => "completed",
        }
    }
}

/// Derived: a learner's progress in a course changed. Written by the progress processor after
/// every event that changes it; the latest one per learner and course is the current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgressUpdated {
    /// The learner.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// The course.
    #[schemars(length(min = 1, max = 128))]
    pub course_id: String,
    /// The course version the counts follow (the highest published); 0 while the course is
    /// not published yet.
    pub course_version: u32,
    /// The distinct lessons of that version the learner has completed.
    pub lessons_completed: u32,
    /// The number of lessons in that version; 0 while the course is not published yet.
    pub lessons_total: u32,
    /// `100 × lessons_completed / lessons_total`, rounded to one decimal; 0 without lessons.
    #[schemars(range(min = 0, max = 100))]
    pub percent_complete: f64,
    /// The learner's status in the course.
    pub status: ProgressStatus,
    /// The sum of `watched_s` of the course's video reports, each capped at 300 s.
    #[schemars(range(min = 0))]
    pub time_spent_s: f64,
    /// The latest event time of the learner's learning events in the course; `null` without any.
    #[serde(default)]
    pub last_activity_at: Option<DateTime<Utc>>,
    /// The event time at which the last missing lesson was first completed; `null` until then.
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// Orders this learner's `progress.updated` events of this course: a later computation
    /// has a larger revision, whatever the order in which the events are delivered, so the
    /// one with the largest revision holds the current figures (a course version that
    /// arrives late may lower them). Strictly increasing per learner and course, and at
    /// least the microseconds since the epoch when computed, so a rebuilt store continues
    /// above the revisions it emitted before. 0 on events of older processors.
    #[serde(default)]
    pub revision: u64,
}

/// Derived: a learner completed a course. Emitted exactly once per learner and course.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CourseCompleted {
    /// The learner.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// The completed course.
    #[schemars(length(min = 1, max = 128))]
    pub course_id: String,
    /// The course version whose lessons were all completed.
    pub course_version: u32,
    /// The event time at which the last missing lesson was first completed.
    pub completed_at: DateTime<Utc>,
}

/// Derived: a learner unlocked an achievement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AchievementUnlocked {
    /// The learner.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// The achievement, unique per learner: it is unlocked at most once.
    #[schemars(length(min = 1, max = 128))]
    pub achievement_id: String,
    /// The human-readable title of the achievement.
    #[schemars(length(min = 1, max = 512))]
    pub title: String,
    /// The course the achievement belongs to, for course-bound achievements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub course_id: Option<String>,
    /// The event time of the event that unlocked the achievement.
    pub unlocked_at: DateTime<Utc>,
}

/// The channel a notification is delivered through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The learner's in-app notification list.
    InApp,
    /// E-mail to the learner's address.
    Email,
    /// The tenant's webhook.
    Webhook,
}

impl Channel {
    /// Returns the wire name: `in_app`, `email` or `webhook`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::InApp => "in_app",
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }
}

/// Derived: the outcome of one delivery attempt of a notification, the data of
/// `notification.sent` and `notification.failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationOutcome {
    /// The notification.
    #[schemars(length(min = 1, max = 128))]
    pub notification_id: String,
    /// The learner notified.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
    /// The notification category (the learner may mute categories).
    #[schemars(length(min = 1, max = 128))]
    pub category: String,
    /// The channel of this attempt.
    pub channel: Channel,
    /// The `id` of the event that caused the notification.
    #[schemars(length(min = 1, max = 128))]
    pub source_event_id: String,
    /// The delivery attempt, starting at 1.
    #[schemars(range(min = 1))]
    pub attempt: u32,
    /// Why the attempt failed; set on `notification.failed` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{EventData, EventType};
    use crate::examples;

    fn course() -> CoursePublished {
        match examples::data(EventType::CoursePublished) {
            EventData::CoursePublished(course) => course,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn lesson_helpers() {
        let mut course = course();
        assert_eq!(course.lesson_ids().collect::<Vec<_>>(), ["lesson-1", "lesson-2", "lesson-3"]);
        assert_eq!(course.lessons_total(), 3);
        // A repeated id (only possible in events that bypassed input validation) counts once.
        course.modules[1].lessons.push("lesson-1".into());
        assert_eq!(course.lessons_total(), 3);
    }

    #[test]
    fn wire_names_of_the_enums() {
        for source in [EnrollmentSource::SelfService, EnrollmentSource::Admin, EnrollmentSource::Purchase] {
            assert_eq!(serde_json::to_value(source).unwrap(), json!(source.as_str()));
        }
        for status in [ProgressStatus::NotStarted, ProgressStatus::InProgress, ProgressStatus::Completed] {
            assert_eq!(serde_json::to_value(status).unwrap(), json!(status.as_str()));
        }
        for channel in [Channel::InApp, Channel::Email, Channel::Webhook] {
            assert_eq!(serde_json::to_value(channel).unwrap(), json!(channel.as_str()));
        }
        assert_eq!(EnrollmentSource::SelfService.as_str(), "self");
        assert_eq!(ProgressStatus::NotStarted.as_str(), "not_started");
        assert_eq!(Channel::InApp.as_str(), "in_app");
    }

    #[test]
    fn optional_fields_on_the_wire() {
        let sent = serde_json::to_value(examples::data(EventType::NotificationSent)).unwrap();
        assert_eq!(sent["data"].get("error"), None, "absent, not null");
        let progress = serde_json::to_value(examples::data(EventType::ProgressUpdated)).unwrap();
        assert_eq!(progress["data"]["completed_at"], json!(null), "explicit null");
        let decoded: ProgressUpdated = serde_json::from_value(json!({
            "learner_id": "l", "course_id": "c", "course_version": 1, "lessons_completed": 0,
            "lessons_total": 3, "percent_complete": 0, "status": "not_started", "time_spent_s": 0
        }))
        .unwrap();
        assert_eq!(decoded.last_activity_at, None);
        assert_eq!(decoded.revision, 0, "events of older processors have no revision");
        assert_eq!(decoded.percent_complete, 0.0);
    }

    #[test]
    fn assessment_percent() {
        let EventData::AssessmentGraded(graded) = examples::data(EventType::AssessmentGraded) else {
            panic!("wrong type");
        };
        assert_eq!(graded.percent(), 75.0);
    }
}

/// A learner's data was erased at the tenant's request (`DELETE /v1/learners/{learner_id}`
/// or `lms learners erase`). The event time is when the erasure was requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LearnerErased {
    /// The erased learner.
    #[schemars(length(min = 1, max = 128))]
    pub learner_id: String,
}
