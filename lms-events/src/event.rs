//! The event envelope as it travels on the topics, the event types and their domains.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::data::{
    AchievementUnlocked, AssessmentGraded, CourseCompleted, CoursePublished, CourseRetired, EnrollmentCreated, EnrollmentDropped,
    LearnerErased, LessonRef, NotificationOutcome, PaymentFailed, PaymentRefunded, PaymentSucceeded, ProgressUpdated, VideoProgressed,
};

/// The CloudEvents specification version of every event: `"1.0"`.
pub const SPEC_VERSION: &str = "1.0";

/// An event as it travels on the topics: a CloudEvents 1.0 envelope around typed data.
///
/// An `Event` is always complete: `id` and `tenant` are set (client input that lacks them is
/// completed by [`crate::parse_client_event`]). On the wire `type` and `data` sit next to the
/// other attributes, as in `{"specversion": "1.0", …, "type": "lesson.completed", "data": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// The CloudEvents specification version, always `"1.0"`.
    #[schemars(extend("const" = "1.0"))]
    pub specversion: String,
    /// The idempotency key, unique per tenant: re-sending an event with the same id changes
    /// nothing.
    #[schemars(length(min = 1, max = 128))]
    pub id: String,
    /// The system that produced the event, such as `web-app`.
    #[schemars(length(min = 1, max = 256))]
    pub source: String,
    /// The event time (when it happened), RFC 3339 with offset; normalised to UTC.
    pub time: DateTime<Utc>,
    /// The learner id for learner events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub subject: Option<String>,
    /// The tenant (organisation) the event belongs to, a CloudEvents extension attribute.
    #[schemars(length(min = 1, max = 128))]
    pub tenant: String,
    /// The event type and its data, serialised as `"type": "…", "data": {…}`.
    #[serde(flatten)]
    pub data: EventData,
}

/// The type of an event together with its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum EventData {
    /// `course.published`: a course version was published.
    #[serde(rename = "course.published")]
    CoursePublished(CoursePublished),
    /// `course.retired`: a course was retired.
    #[serde(rename = "course.retired")]
    CourseRetired(CourseRetired),
    /// `enrollment.created`: a learner was enrolled in a course.
    #[serde(rename = "enrollment.created")]
    EnrollmentCreated(EnrollmentCreated),
    /// `enrollment.dropped`: a learner's enrollment was dropped.
    #[serde(rename = "enrollment.dropped")]
    EnrollmentDropped(EnrollmentDropped),
    /// `lesson.started`: a learner started a lesson.
    #[serde(rename = "lesson.started")]
    LessonStarted(LessonRef),
    /// `lesson.completed`: a learner completed a lesson.
    #[serde(rename = "lesson.completed")]
    LessonCompleted(LessonRef),
    /// `video.progressed`: a video player reported progress.
    #[serde(rename = "video.progressed")]
    VideoProgressed(VideoProgressed),
    /// `assessment.graded`: an assessment attempt was graded.
    #[serde(rename = "assessment.graded")]
    AssessmentGraded(AssessmentGraded),
    /// `payment.succeeded`: a payment succeeded.
    #[serde(rename = "payment.succeeded")]
    PaymentSucceeded(PaymentSucceeded),
    /// `payment.refunded`: a payment was refunded.
    #[serde(rename = "payment.refunded")]
    PaymentRefunded(PaymentRefunded),
    /// `payment.failed`: a payment failed.
    #[serde(rename = "payment.failed")]
    PaymentFailed(PaymentFailed),
    /// `progress.updated` (derived): a learner's progress in a course changed.
    #[serde(rename = "progress.updated")]
    ProgressUpdated(ProgressUpdated),
    /// `course.completed` (derived): a learner completed a course.
    #[serde(rename = "course.completed")]
    CourseCompleted(CourseCompleted),
    /// `achievement.unlocked` (derived): a learner unlocked an achievement.
    #[serde(rename = "achievement.unlocked")]
    AchievementUnlocked(AchievementUnlocked),
    /// `notification.sent` (derived): a notification was delivered.
    #[serde(rename = "notification.sent")]
    NotificationSent(NotificationOutcome),
    /// `notification.failed` (derived): a notification delivery attempt failed.
    #[serde(rename = "notification.failed")]
    NotificationFailed(NotificationOutcome),
    /// `learner.erased` (written by the erasure endpoint and `lms learners erase`, never by
    /// clients as an event): the learner's data was erased; every processor drops the
    /// learner's events from then on and removes what it holds of them.
    #[serde(rename = "learner.erased")]
    LearnerErased(LearnerErased),
}

impl EventData {
    /// Returns the type of this data.
    pub fn event_type(&self) -> EventType {
        match self {
            EventData::CoursePublished(_) => EventType::CoursePublished,
            EventData::CourseRetired(_) => EventType::CourseRetired,
            EventData::EnrollmentCreated(_) => EventType::EnrollmentCreated,
            EventData::EnrollmentDropped(_) => EventType::EnrollmentDropped,
            EventData::LessonStarted(_) => EventType::LessonStarted,
            EventData::LessonCompleted(_) => EventType::LessonCompleted,
            EventData::VideoProgressed(_) => EventType::VideoProgressed,
            EventData::AssessmentGraded(_) => EventType::AssessmentGraded,
            EventData::PaymentSucceeded(_) => EventType::PaymentSucceeded,
            EventData::PaymentRefunded(_) => EventType::PaymentRefunded,
            EventData::PaymentFailed(_) => EventType::PaymentFailed,
            EventData::ProgressUpdated(_) => EventType::ProgressUpdated,
            EventData::CourseCompleted(_) => EventType::CourseCompleted,
            EventData::AchievementUnlocked(_) => EventType::AchievementUnlocked,
            EventData::NotificationSent(_) => EventType::NotificationSent,
            EventData::NotificationFailed(_) => EventType::NotificationFailed,
            EventData::LearnerErased(_) => EventType::LearnerErased,
        }
    }

    /// Returns the learner the data is about, if any (catalog events and refunds have none).
    pub fn learner_id(&self) -> Option<&str> {
        match self {
            EventData::CoursePublished(_) | EventData::CourseRetired(_) | EventData::PaymentRefunded(_) => None,
            EventData::EnrollmentCreated(d) => Some(&d.learner_id),
            EventData::EnrollmentDropped(d) => Some(&d.learner_id),
            EventData::LessonStarted(d) | EventData::LessonCompleted(d) => Some(&d.learner_id),
            EventData::VideoProgressed(d) => Some(&d.learner_id),
            EventData::AssessmentGraded(d) => Some(&d.learner_id),
            EventData::PaymentSucceeded(d) => Some(&d.learner_id),
            EventData::PaymentFailed(d) => Some(&d.learner_id),
            EventData::ProgressUpdated(d) => Some(&d.learner_id),
            EventData::CourseCompleted(d) => Some(&d.learner_id),
            EventData::AchievementUnlocked(d) => Some(&d.learner_id),
            EventData::NotificationSent(d) | EventData::NotificationFailed(d) => Some(&d.learner_id),
            EventData::LearnerErased(d) => Some(&d.learner_id),
        }
    }

    /// Returns the course the data is about, if any.
    ///
    /// Payments name a course only when they carry one; a refund's course is that of the
    /// payment it refunds, which the data does not carry.
    pub fn course_id(&self) -> Option<&str> {
        match self {
            EventData::CoursePublished(d) => Some(&d.course_id),
            EventData::CourseRetired(d) => Some(&d.course_id),
            EventData::EnrollmentCreated(d) => Some(&d.course_id),
            EventData::EnrollmentDropped(d) => Some(&d.course_id),
            EventData::LessonStarted(d) | EventData::LessonCompleted(d) => Some(&d.course_id),
            EventData::VideoProgressed(d) => Some(&d.course_id),
            EventData::AssessmentGraded(d) => Some(&d.course_id),
            EventData::PaymentSucceeded(d) => d.course_id.as_deref(),
            EventData::PaymentRefunded(_) | EventData::PaymentFailed(_) => None,
            EventData::ProgressUpdated(d) => Some(&d.course_id),
            EventData::CourseCompleted(d) => Some(&d.course_id),
            EventData::AchievementUnlocked(d) => d.course_id.as_deref(),
            EventData::NotificationSent(_) | EventData::NotificationFailed(_) | EventData::LearnerErased(_) => None,
        }
    }
}

impl Event {
    /// Builds a derived event, written by a processor.
    ///
    /// The id is a fresh UUIDv7 (replace it with [`Event::with_id`] when the processor needs a
    /// deterministic id), `specversion` is `"1.0"` and `subject` is the data's learner id.
    pub fn derived(tenant: &str, source: &str, time: DateTime<Utc>, data: EventData) -> Event {
        Event {
            specversion: SPEC_VERSION.to_owned(),
            id: Uuid::now_v7().to_string(),
            source: source.to_owned(),
            time,
            subject: data.learner_id().map(str::to_owned),
            tenant: tenant.to_owned(),
            data,
        }
    }

    /// Returns the event with its id replaced, for example by a deterministic id derived from
    /// the event that caused it, so that a replay writes the same id again.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Event {
        self.id = id.into();
        self
    }

    /// Returns the event's type.
    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }

    /// Returns the domain (topic family) of the event's type.
    pub fn domain(&self) -> Domain {
        self.event_type().domain()
    }

    /// Returns the Kafka record key.
    ///
    /// It is the learner id for learner and derived events and the payment id for payment
    /// events (a refund carries no learner id and must stay ordered after its payment).
    /// Catalog events, on the compacted catalog topic, get keys under which compaction keeps
    /// everything the catalog needs ([`catalog_publication_key`], [`catalog_retirement_key`]):
    /// one key per tenant, course, version and content for a publication, one per tenant
    /// and course for a retirement.
    pub fn partition_key(&self) -> Cow<'_, str> {
        match &self.data {
            EventData::CoursePublished(d) => Cow::Owned(catalog_publication_key(&self.tenant, d)),
            EventData::CourseRetired(d) => Cow::Owned(catalog_retirement_key(&self.tenant, &d.course_id)),
            EventData::PaymentSucceeded(d) => Cow::Borrowed(d.payment_id.as_str()),
            EventData::PaymentRefunded(d) => Cow::Borrowed(d.payment_id.as_str()),
            EventData::PaymentFailed(d) => Cow::Borrowed(d.payment_id.as_str()),
            EventData::EnrollmentCreated(d) => Cow::Borrowed(d.learner_id.as_str()),
            EventData::EnrollmentDropped(d) => Cow::Borrowed(d.learner_id.as_str()),
            EventData::LessonStarted(d) | EventData::LessonCompleted(d) => Cow::Borrowed(d.learner_id.as_str()),
            EventData::VideoProgressed(d) => Cow::Borrowed(d.learner_id.as_str()),
            EventData::AssessmentGraded(d) => Cow::Borrowed(d.learner_id.as_str()),
            EventData::ProgressUpdated(d) => Cow::Borrowed(d.learner_id.as_str()),
            EventData::CourseCompleted(d) => Cow::Borrowed(d.learner_id.as_str()),
            EventData::AchievementUnlocked(d) => Cow::Borrowed(d.learner_id.as_str()),
            EventData::NotificationSent(d) | EventData::NotificationFailed(d) => Cow::Borrowed(d.learner_id.as_str()),
            EventData::LearnerErased(d) => Cow::Owned(erasure_key(&self.tenant, &d.learner_id)),
        }
    }

    /// Returns the learner the event is about, if any (catalog events and refunds have none).
    pub fn learner_id(&self) -> Option<&str> {
        self.data.learner_id()
    }

    /// Returns the course the event is about, if its data names one.
    pub fn course_id(&self) -> Option<&str> {
        self.data.course_id()
    }
}

/// The key of a `course.published` record on the compacted catalog topic:
/// `{tenant}/{course_id}/v{version}/{content}`, where `content` is [`course_content_hash`].
///
/// Compaction keeps the latest record per key, so with this key it only ever removes
/// exact duplicates (same tenant, course, version and content): every version survives,
/// and the catalog, which keeps the highest (ties broken by content), rebuilds the same
/// course from the compacted topic as from the full log. Versions of one course may land
/// on different partitions; the catalog does not depend on their order.
/// Tenant and course id are escaped ([`escape_key_part`]), so the key is unambiguous.
pub fn catalog_publication_key(tenant: &str, course: &CoursePublished) -> String {
    format!("{}/{}/v{}/{}", escape_key_part(tenant), escape_key_part(&course.course_id), course.version, course_content_hash(course))
}

/// The key of a `course.retired` record on the compacted catalog topic:
/// `{tenant}/{course_id}/retired`, a key of its own so that a retirement never compacts
/// away a publication (and the other way round).
pub fn catalog_retirement_key(tenant: &str, course_id: &str) -> String {
    format!("{}/{}/retired", escape_key_part(tenant), escape_key_part(course_id))
}

/// The key of a `learner.erased` record on the compacted erasure topic:
/// `{tenant}/{learner_id}`, so compaction keeps one record per erased learner of every tenant.
pub fn erasure_key(tenant: &str, learner_id: &str) -> String {
    format!("{}/{}", escape_key_part(tenant), escape_key_part(learner_id))
}

/// Escapes one part of a catalog key: `%` as `%25` and `/` as `%2F`, so that parts never
/// contain the separator and distinct (tenant, course) pairs give distinct keys.
pub fn escape_key_part(part: &str) -> Cow<'_, str> {
    if !part.contains(['%', '/']) {
        return Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 4);
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A stable 64-bit hash of a publication's content (title and modules), as 16 hex digits.
///
/// FNV-1a over a length-prefixed encoding of the title, then of each module's id and
/// lessons; spelled out here rather than taken from `std`'s `DefaultHasher`, whose output
/// may change between Rust releases, because record keys outlive builds.
pub fn course_content_hash(course: &CoursePublished) -> String {
    struct Fnv(u64);
    impl Fnv {
        fn bytes(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        fn len(&mut self, n: usize) {
            self.bytes(&(n as u64).to_le_bytes());
        }
        fn str(&mut self, s: &str) {
            self.len(s.len());
            self.bytes(s.as_bytes());
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.str(&course.title);
    h.len(course.modules.len());
    for m in &course.modules {
        h.str(&m.module_id);
        h.len(m.lessons.len());
        for l in &m.lessons {
            h.str(l);
        }
    }
    format!("{:016x}", h.0)
}

/// The type of an event, the CloudEvents `type` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `course.published`
    CoursePublished,
    /// `course.retired`
    CourseRetired,
    /// `enrollment.created`
    EnrollmentCreated,
    /// `enrollment.dropped`
    EnrollmentDropped,
    /// `lesson.started`
    LessonStarted,
    /// `lesson.completed`
    LessonCompleted,
    /// `video.progressed`
    VideoProgressed,
    /// `assessment.graded`
    AssessmentGraded,
    /// `payment.succeeded`
    PaymentSucceeded,
    /// `payment.refunded`
    PaymentRefunded,
    /// `payment.failed`
    PaymentFailed,
    /// `progress.updated` (derived)
    ProgressUpdated,
    /// `course.completed` (derived)
    CourseCompleted,
    /// `achievement.unlocked` (derived)
    AchievementUnlocked,
    /// `notification.sent` (derived)
    NotificationSent,
    /// `notification.failed` (derived)
    NotificationFailed,
    /// `learner.erased` (written by the erasure endpoint)
    LearnerErased,
}

impl EventType {
    /// Every event type: first the eleven client-writable ones, then the five derived ones,
    /// then the erasure.
    pub const ALL: [EventType; 17] = [
        EventType::CoursePublished,
        EventType::CourseRetired,
        EventType::EnrollmentCreated,
        EventType::EnrollmentDropped,
        EventType::LessonStarted,
        EventType::LessonCompleted,
        EventType::VideoProgressed,
        EventType::AssessmentGraded,
        EventType::PaymentSucceeded,
        EventType::PaymentRefunded,
        EventType::PaymentFailed,
        EventType::ProgressUpdated,
        EventType::CourseCompleted,
        EventType::AchievementUnlocked,
        EventType::NotificationSent,
        EventType::NotificationFailed,
        EventType::LearnerErased,
    ];

    /// Returns the wire name, such as `"lesson.completed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CoursePublished => "course.published",
            EventType::CourseRetired => "course.retired",
            EventType::EnrollmentCreated => "enrollment.created",
            EventType::EnrollmentDropped => "enrollment.dropped",
            EventType::LessonStarted => "lesson.started",
            EventType::LessonCompleted => "lesson.completed",
            EventType::VideoProgressed => "video.progressed",
            EventType::AssessmentGraded => "assessment.graded",
            EventType::PaymentSucceeded => "payment.succeeded",
            EventType::PaymentRefunded => "payment.refunded",
            EventType::PaymentFailed => "payment.failed",
            EventType::ProgressUpdated => "progress.updated",
            EventType::CourseCompleted => "course.completed",
            EventType::AchievementUnlocked => "achievement.unlocked",
            EventType::NotificationSent => "notification.sent",
            EventType::NotificationFailed => "notification.failed",
            EventType::LearnerErased => "learner.erased",
        }
    }

    /// Returns the domain (topic family) the type belongs to.
    pub fn domain(self) -> Domain {
        match self {
            EventType::LessonStarted | EventType::LessonCompleted | EventType::VideoProgressed | EventType::AssessmentGraded => {
                Domain::Learning
            }
            EventType::EnrollmentCreated | EventType::EnrollmentDropped => Domain::Enrollment,
            EventType::PaymentSucceeded | EventType::PaymentRefunded | EventType::PaymentFailed => Domain::Payment,
            EventType::CoursePublished | EventType::CourseRetired => Domain::Catalog,
            EventType::ProgressUpdated
            | EventType::CourseCompleted
            | EventType::AchievementUnlocked
            | EventType::NotificationSent
            | EventType::NotificationFailed => Domain::Derived,
            EventType::LearnerErased => Domain::Erasure,
        }
    }

    /// Tells whether clients may send events of this type; `false` for the five derived types
    /// and the erasure, which only the pipeline writes.
    pub fn is_client_writable(self) -> bool {
        !matches!(self.domain(), Domain::Derived | Domain::Erasure | Domain::DeadLetter)
    }

    /// Returns the client-writable types, in the order of [`EventType::ALL`].
    pub fn client_writable() -> impl Iterator<Item = EventType> {
        EventType::ALL.into_iter().filter(|t| t.is_client_writable())
    }

    /// Tells whether events of this type are about one learner's learning activity
    /// (`lesson.*`, `video.progressed`, `assessment.graded`), the events that count as
    /// activity for progress and analytics.
    pub fn is_learning_activity(self) -> bool {
        self.domain() == Domain::Learning
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown event type name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {name:?}; the known types are {known}", known = known_type_list())]
pub struct UnknownEventType {
    /// The name that was not recognised.
    pub name: String,
}

/// Returns the names of every event type, separated by commas.
fn known_type_list() -> String {
    EventType::ALL.map(EventType::as_str).join(", ")
}

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnknownEventType { name: s.to_owned() })
    }
}

/// The topic family an event type belongs to; `topics.yaml` maps each domain to a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    /// Learning activity: `lesson.*`, `video.progressed`, `assessment.graded`.
    Learning,
    /// Enrollments: `enrollment.*`.
    Enrollment,
    /// Payments: `payment.*`.
    Payment,
    /// The course catalog: `course.published`, `course.retired`.
    Catalog,
    /// Events written by the processors: progress, completions, achievements, notifications.
    Derived,
    /// Records a consumer could not process; it has no event types of its own.
    DeadLetter,
    /// Learner erasures (`learner.erased`), kept for ever on a compacted topic so that a
    /// replay from the beginning, on any store, learns every erasure.
    Erasure,
}

impl Domain {
    /// Every domain.
    pub const ALL: [Domain; 7] =
        [Domain::Learning, Domain::Enrollment, Domain::Payment, Domain::Catalog, Domain::Derived, Domain::DeadLetter, Domain::Erasure];

    /// Returns the name used in `topics.yaml`, such as `"learning"` or `"dead_letter"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Learning => "learning",
            Domain::Enrollment => "enrollment",
            Domain::Payment => "payment",
            Domain::Catalog => "catalog",
            Domain::Derived => "derived",
            Domain::DeadLetter => "dead_letter",
            Domain::Erasure => "erasure",
        }
    }

    /// Returns the event types of the domain (none for [`Domain::DeadLetter`]).
    pub fn event_types(self) -> impl Iterator<Item = EventType> {
        EventType::ALL.into_iter().filter(move |t| t.domain() == self)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::examples;

    #[test]
    fn event_type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        let err = "lesson.finished".parse::<EventType>().unwrap_err();
        let message = err.to_string();
        assert!(message.contains("\"lesson.finished\""), "{message}");
        assert!(message.contains("lesson.completed"), "{message}");
        assert!(message.contains("notification.failed"), "{message}");
    }

    #[test]
    fn event_type_names_match_serde_tags() {
        for t in EventType::ALL {
            let event = examples::event(t);
            assert_eq!(event.event_type(), t);
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["type"], t.as_str());
        }
    }

    #[test]
    fn only_the_five_derived_types_and_the_erasure_are_not_client_writable() {
        let derived: Vec<_> = EventType::ALL.into_iter().filter(|t| !t.is_client_writable()).map(EventType::as_str).collect();
        assert_eq!(
            derived,
            ["progress.updated", "course.completed", "achievement.unlocked", "notification.sent", "notification.failed", "learner.erased"]
        );
        assert_eq!(EventType::client_writable().count(), 11);
    }

    #[test]
    fn domains_partition_the_types() {
        let mut covered = 0;
        for domain in Domain::ALL {
            covered += domain.event_types().count();
            let json = serde_json::to_value(domain).unwrap();
            assert_eq!(json, domain.as_str());
        }
        assert_eq!(covered, EventType::ALL.len());
        assert_eq!(Domain::DeadLetter.event_types().count(), 0);
        assert_eq!(EventType::VideoProgressed.domain(), Domain::Learning);
        assert_eq!(EventType::PaymentRefunded.domain(), Domain::Payment);
        assert_eq!(EventType::CourseRetired.domain(), Domain::Catalog);
        assert_eq!(EventType::EnrollmentDropped.domain(), Domain::Enrollment);
    }

    #[test]
    fn partition_keys_follow_the_ordering_needs() {
        let key = |t| examples::event(t).partition_key().into_owned();
        assert_eq!(key(EventType::LessonCompleted), "learner-42");
        assert_eq!(key(EventType::EnrollmentCreated), "learner-42");
        assert_eq!(key(EventType::ProgressUpdated), "learner-42");
        assert_eq!(key(EventType::NotificationFailed), "learner-42");
        assert_eq!(key(EventType::PaymentSucceeded), "pay-7");
        assert_eq!(key(EventType::PaymentRefunded), "pay-7");
        assert_eq!(key(EventType::PaymentFailed), "pay-8");
        // The catalog: tenant, course, version and content, so that compaction only
        // removes exact duplicates; a retirement has a key of its own.
        assert_eq!(key(EventType::CoursePublished), "acme/course-rust-101/v2/7a5af783be972809");
        assert_eq!(key(EventType::CourseRetired), "acme/course-rust-101/retired");
    }

    #[test]
    fn catalog_keys_survive_compaction() {
        let published = |tenant: &str, f: &dyn Fn(&mut CoursePublished)| {
            let mut e = examples::event(EventType::CoursePublished);
            e.tenant = tenant.to_owned();
            if let EventData::CoursePublished(d) = &mut e.data {
                f(d);
            }
            e.partition_key().into_owned()
        };
        let base = published("acme", &|_| {});
        assert_eq!(base, published("acme", &|_| {}), "stable: duplicates share a key");
        // Tenants do not collide, nor do versions or contents of one version.
        assert_ne!(base, published("globex", &|_| {}));
        assert_ne!(base, published("acme", &|d| d.version = 1));
        assert_ne!(base, published("acme", &|d| d.title.push('!')));
        assert_ne!(base, published("acme", &|d| d.modules[1].lessons.push("lesson-4".into())));
        // Moving a lesson across modules changes the content, and so the key.
        assert_ne!(
            base,
            published("acme", &|d| {
                let l = d.modules[0].lessons.pop().unwrap();
                d.modules[1].lessons.insert(0, l);
            })
        );
        // Separators inside ids are escaped: ("a/b", "c") and ("a", "b/c") differ.
        assert_eq!(catalog_retirement_key("a/b", "c"), "a%2Fb/c/retired");
        assert_eq!(catalog_retirement_key("a", "b/c"), "a/b%2Fc/retired");
        assert_eq!(catalog_retirement_key("a%2Fb", "c"), "a%252Fb/c/retired");
        assert_eq!(escape_key_part("plain"), "plain");
    }

    #[test]
    fn learner_and_course_accessors() {
        let refund = examples::event(EventType::PaymentRefunded);
        assert_eq!(refund.learner_id(), None);
        assert_eq!(refund.course_id(), None);
        let graded = examples::event(EventType::AssessmentGraded);
        assert_eq!(graded.learner_id(), Some("learner-42"));
        assert_eq!(graded.course_id(), Some("course-rust-101"));
        let published = examples::event(EventType::CoursePublished);
        assert_eq!(published.learner_id(), None);
        assert_eq!(published.course_id(), Some("course-rust-101"));
    }

    #[test]
    fn derived_events_are_complete() {
        let time = "2026-11-20T10:15:00Z".parse().unwrap();
        let data = examples::event(EventType::CourseCompleted).data;
        let a = Event::derived("acme", "progress-processor", time, data.clone());
        let b = Event::derived("acme", "progress-processor", time, data);
        assert_eq!(a.specversion, SPEC_VERSION);
        assert_eq!(a.tenant, "acme");
        assert_eq!(a.subject.as_deref(), Some("learner-42"));
        assert_eq!(a.time, time);
        assert_ne!(a.id, b.id, "every derived event gets a fresh id");
        let id = Uuid::parse_str(&a.id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(a.with_id("fixed").id, "fixed");
    }
}
