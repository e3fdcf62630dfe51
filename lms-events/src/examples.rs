//! One realistic example event of every type, for tests, documentation and tools.
//!
//! Every example belongs to tenant `acme`, learner `learner-42` and course `course-rust-101`
//! where those apply, so that examples can be combined into small scenarios.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use crate::data::{
    AchievementUnlocked, AssessmentGraded, Channel, CourseCompleted, CoursePublished, CourseRetired, EnrollmentCreated, EnrollmentDropped,
    EnrollmentSource, LearnerErased, LessonRef, Module, NotificationOutcome, PaymentFailed, PaymentRefunded, PaymentSucceeded,
    ProgressStatus, ProgressUpdated, VideoProgressed,
};
use crate::event::{Event, EventData, EventType, SPEC_VERSION};

/// The tenant of every example.
pub const TENANT: &str = "acme";
/// The learner of every learner example.
pub const LEARNER: &str = "learner-42";
/// The course of every course example.
pub const COURSE: &str = "course-rust-101";

/// Returns the event time of the examples, 2026-11-20T10:15:00Z.
pub fn time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 10, 15, 0).single().unwrap_or_default()
}

fn lesson() -> LessonRef {
    LessonRef { learner_id: LEARNER.into(), course_id: COURSE.into(), lesson_id: "lesson-1".into() }
}

fn notification(error: Option<&str>) -> NotificationOutcome {
    NotificationOutcome {
        notification_id: "notif-1".into(),
        learner_id: LEARNER.into(),
        category: "course_completed".into(),
        channel: Channel::Email,
        source_event_id: "0193a1b2-0000-7000-8000-000000000001".into(),
        attempt: if error.is_some() { 2 } else { 1 },
        error: error.map(str::to_owned),
    }
}

/// Returns the example data of a type.
pub fn data(event_type: EventType) -> EventData {
    match event_type {
        EventType::CoursePublished => EventData::CoursePublished(CoursePublished {
            course_id: COURSE.into(),
            title: "Rust from scratch".into(),
            version: 2,
            modules: vec![
                Module { module_id: "module-1".into(), lessons: vec!["lesson-1".into(), "lesson-2".into()] },
                Module { module_id: "module-2".into(), lessons: vec!["lesson-3".into()] },
            ],
        }),
        EventType::CourseRetired => EventData::CourseRetired(CourseRetired { course_id: COURSE.into() }),
        EventType::EnrollmentCreated => EventData::EnrollmentCreated(EnrollmentCreated {
            learner_id: LEARNER.into(),
            course_id: COURSE.into(),
            source: EnrollmentSource::SelfService,
        }),
        EventType::EnrollmentDropped => {
            EventData::EnrollmentDropped(EnrollmentDropped { learner_id: LEARNER.into(), course_id: COURSE.into() })
        }
        EventType::LessonStarted => EventData::LessonStarted(lesson()),
        EventType::LessonCompleted => EventData::LessonCompleted(lesson()),
        EventType::VideoProgressed => EventData::VideoProgressed(VideoProgressed {
            learner_id: LEARNER.into(),
            course_id: COURSE.into(),
            lesson_id: "lesson-1".into(),
            position_s: 120.5,
            duration_s: 600.0,
            watched_s: 30.0,
        }),
        EventType::AssessmentGraded => EventData::AssessmentGraded(AssessmentGraded {
            learner_id: LEARNER.into(),
            course_id: COURSE.into(),
            assessment_id: "quiz-1".into(),
            score: 7.5,
            max_score: 10.0,
            attempt: 1,
        }),
        EventType::PaymentSucceeded => EventData::PaymentSucceeded(PaymentSucceeded {
            payment_id: "pay-7".into(),
            learner_id: LEARNER.into(),
            course_id: Some(COURSE.into()),
            amount_minor: 4900,
            currency: "EUR".into(),
        }),
        EventType::PaymentRefunded => {
            EventData::PaymentRefunded(PaymentRefunded { payment_id: "pay-7".into(), amount_minor: 4900, currency: "EUR".into() })
        }
        EventType::PaymentFailed => EventData::PaymentFailed(PaymentFailed {
            payment_id: "pay-8".into(),
            learner_id: LEARNER.into(),
            reason: "card_declined".into(),
        }),
        EventType::ProgressUpdated => EventData::ProgressUpdated(ProgressUpdated {
            learner_id: LEARNER.into(),
            course_id: COURSE.into(),
            course_version: 2,
            lessons_completed: 1,
            lessons_total: 3,
            percent_complete: 33.3,
            status: ProgressStatus::InProgress,
            time_spent_s: 330.0,
            last_activity_at: Some(time()),
            completed_at: None,
            revision: 1_794_220_200_000_000,
        }),
        EventType::CourseCompleted => EventData::CourseCompleted(CourseCompleted {
            learner_id: LEARNER.into(),
            course_id: COURSE.into(),
            course_version: 2,
            completed_at: time(),
        }),
        EventType::AchievementUnlocked => EventData::AchievementUnlocked(AchievementUnlocked {
            learner_id: LEARNER.into(),
            achievement_id: "first-course".into(),
            title: "First course completed".into(),
            course_id: Some(COURSE.into()),
            unlocked_at: time(),
        }),
        EventType::NotificationSent => EventData::NotificationSent(notification(None)),
        EventType::NotificationFailed => EventData::NotificationFailed(notification(Some("SMTP 451: try again later"))),
        EventType::LearnerErased => EventData::LearnerErased(LearnerErased { learner_id: LEARNER.into() }),
    }
}

/// Returns a complete example event of a type, as it would travel on the topics.
pub fn event(event_type: EventType) -> Event {
    let data = data(event_type);
    Event {
        specversion: SPEC_VERSION.to_owned(),
        id: format!("example-{event_type}"),
        source: if event_type.is_client_writable() { "web-app".to_owned() } else { "progress-processor".to_owned() },
        time: time(),
        subject: data.learner_id().map(str::to_owned),
        tenant: TENANT.to_owned(),
        data,
    }
}

/// Returns a minimal valid client input of a type as JSON: without `id`, `tenant` and
/// `subject`, with the time given in a non-UTC offset.
///
/// Derived types get the same shape, though clients may not send them.
pub fn client_json(event_type: EventType) -> Value {
    json!({
        "specversion": SPEC_VERSION,
        "type": event_type.as_str(),
        "source": "web-app",
        "time": "2026-11-20T11:15:00+01:00",
        "data": serde_json::to_value(data(event_type)).map_or(Value::Null, |v| v["data"].clone()),
    })
}
