//! The rows each event contributes to the analytics tables: one mapping shared by both stores,
//! so ClickHouse and the embedded twin hold the same facts.
//!
//! Every table is keyed so that writing the same event twice adds nothing a read can see:
//! either the key contains the event id (a duplicate row is identical, and reads count
//! distinct ids), or the row is a monotone summary of its key (the latest activity, the
//! furthest progress, the earliest completion) that reads combine with `max`/`min`. See the
//! crate documentation for the whole argument.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use lms_events::data::{ProgressStatus, ProgressUpdated};
use lms_events::{Event, EventData};
use serde::{Deserialize, Serialize};

/// Days from 0001-01-01 (day 1 in chrono's count) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Days since 1970-01-01 of a date.
pub fn day_number(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

/// The date of a day number (days since 1970-01-01).
pub fn date_of(day: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day.saturating_add(UNIX_EPOCH_DAYS_FROM_CE)).unwrap_or(NaiveDate::MIN)
}

/// Microseconds since the epoch of a time.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The time of microseconds since the epoch.
pub fn time_of(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The UTC day, its week's Monday and its month's first day, as day numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days {
    /// The UTC day.
    pub day: i32,
    /// The Monday of its week.
    pub week: i32,
    /// The first day of its month.
    pub month: i32,
}

impl Days {
    /// The days of a time.
    pub fn of(t: DateTime<Utc>) -> Days {
        let d = t.date_naive();
        let day = day_number(d);
        let week = day - d.weekday().num_days_from_monday() as i32;
        let month = day - (d.day() as i32 - 1);
        Days { day, week, month }
    }
}

/// Every event, as received (ClickHouse only; the twin keeps the rollups alone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct EventRow {
    pub tenant: String,
    pub id: String,
    /// The event type, such as `lesson.completed`.
    pub event_type: String,
    pub time_us: i64,
    pub day: i32,
    pub source: String,
    pub subject: String,
    /// The learner the data names, or empty.
    pub learner_id: String,
    /// The course the data names, or empty.
    pub course_id: String,
    /// The `data` object as JSON.
    pub data: String,
}

/// A learner active in a course on a day: one row per learning event, all equal for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct ActivityDayRow {
    pub tenant: String,
    pub day: i32,
    pub week: i32,
    pub month: i32,
    pub course_id: String,
    pub learner_id: String,
}

/// The latest learning event of a learner in a course seen in one batch; reads take the max.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct CourseActivityRow {
    pub tenant: String,
    pub course_id: String,
    pub learner_id: String,
    pub last_us: i64,
}

/// An `enrollment.created` or `enrollment.dropped` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct EnrollmentRow {
    pub tenant: String,
    pub course_id: String,
    pub learner_id: String,
    pub id: String,
    pub day: i32,
    pub week: i32,
    pub month: i32,
    /// 1 for a drop.
    pub dropped: i32,
    /// `2 × time_us + dropped`: the latest event of a learner and course has the largest
    /// key (at equal times the drop wins), so `max(order_key)` alone tells the current
    /// state and its time.
    pub order_key: i64,
}

impl EnrollmentRow {
    /// The order key of an enrollment event.
    pub fn order_key(time_us: i64, dropped: bool) -> i64 {
        time_us.saturating_mul(2).saturating_add(i64::from(dropped))
    }

    /// Whether the event of an order key is a drop, and its time.
    pub fn decode_key(key: i64) -> (bool, i64) {
        (key.rem_euclid(2) == 1, key.div_euclid(2))
    }
}

/// A learner's figures in a course as one `progress.updated` gave them: reads keep, per
/// learner and course, the row of the largest revision (`argMax(…, revision)`), which holds
/// the current figures even when a late course version lowered them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct LearnerProgressRow {
    pub tenant: String,
    pub course_id: String,
    pub learner_id: String,
    /// [`ProgressUpdated::revision`](lms_events::data::ProgressUpdated::revision), or, for
    /// the events of older processors that have none (0), the percent in tenths (at most
    /// 1000, below every real revision): among those the furthest wins, as it used to.
    pub revision: u64,
    /// `percent_complete × 10`, rounded (the percent has one decimal).
    pub pct_tenths: i32,
    /// 1 when the status is `completed`.
    pub completed: i32,
    /// When the last missing lesson was first completed (0 unless completed).
    pub completed_us: i64,
    /// The UTC day, week and month of `completed_us` (0 unless completed).
    pub day: i32,
    pub week: i32,
    pub month: i32,
}

impl LearnerProgressRow {
    /// The revision a `progress.updated` ranks by (see [`LearnerProgressRow::revision`]).
    pub fn revision_of(d: &ProgressUpdated) -> u64 {
        if d.revision == 0 { u64::try_from(tenths(d.percent_complete).clamp(0, 1000)).unwrap_or(0) } else { d.revision }
    }

    /// The row of a `progress.updated` event.
    pub fn of(tenant: &str, d: &ProgressUpdated) -> LearnerProgressRow {
        let pct_tenths = tenths(d.percent_complete);
        let completed_at = match (d.status, d.completed_at) {
            (ProgressStatus::Completed, Some(at)) => Some(at),
            _ => None,
        };
        let days = completed_at.map(Days::of);
        LearnerProgressRow {
            tenant: tenant.to_owned(),
            course_id: d.course_id.clone(),
            learner_id: d.learner_id.clone(),
            revision: Self::revision_of(d),
            pct_tenths,
            completed: i32::from(completed_at.is_some()),
            completed_us: completed_at.map_or(0, micros),
            day: days.map_or(0, |d| d.day),
            week: days.map_or(0, |d| d.week),
            month: days.map_or(0, |d| d.month),
        }
    }
}

/// `percent_complete × 10` (the percent has one decimal); the cast saturates on nonsense.
fn tenths(percent: f64) -> i32 {
    (percent * 10.0).round() as i32
}

/// A `payment.succeeded` or `payment.refunded` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct PaymentRow {
    pub tenant: String,
    pub payment_id: String,
    pub id: String,
    /// 1 for a refund.
    pub refund: i32,
    pub day: i32,
    pub week: i32,
    pub month: i32,
    pub amount_minor: i64,
    pub currency: String,
    /// The course bought, or empty (always empty on refunds: they name no course).
    pub course_id: String,
}

/// An `assessment.graded` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct AttemptRow {
    pub tenant: String,
    pub assessment_id: String,
    pub learner_id: String,
    pub id: String,
    pub course_id: String,
    pub day: i32,
    /// `100 × score / max_score`.
    pub pct: f64,
}

/// The rows of a batch of events, one list per table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub events: Vec<EventRow>,
    pub activity_daily: Vec<ActivityDayRow>,
    pub course_activity: Vec<CourseActivityRow>,
    pub enrollments: Vec<EnrollmentRow>,
    pub learner_progress: Vec<LearnerProgressRow>,
    pub payments: Vec<PaymentRow>,
    pub attempts: Vec<AttemptRow>,
}

impl Facts {
    /// Maps events to rows. Within the batch, rows that are summaries of a key are reduced
    /// already (one active-day row per key, the latest activity, the progress of the largest
    /// revision), which only saves rows: reads would give the same answers without it.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Facts {
        use std::collections::{HashMap, HashSet};
        let mut f = Facts::default();
        // Keys borrow from the events; rows are built once per key at the end.
        let mut active: HashSet<(&'a str, i32, &'a str, &'a str)> = HashSet::new();
        let mut weeks: HashMap<i32, (i32, i32)> = HashMap::new();
        let mut last: HashMap<(&'a str, &'a str, &'a str), i64> = HashMap::new();
        let mut latest: HashMap<(&'a str, &'a str, &'a str), (u64, &'a ProgressUpdated)> = HashMap::new();
        for e in events {
            let time_us = micros(e.time);
            let days = Days::of(e.time);
            weeks.insert(days.day, (days.week, days.month));
            f.events.push(EventRow {
                tenant: e.tenant.clone(),
                id: e.id.clone(),
                event_type: e.event_type().as_str().to_owned(),
                time_us,
                day: days.day,
                source: e.source.clone(),
                subject: e.subject.clone().unwrap_or_default(),
                learner_id: e.learner_id().unwrap_or_default().to_owned(),
                course_id: e.course_id().unwrap_or_default().to_owned(),
                data: data_json(&e.data),
            });
            let tenant = e.tenant.as_str();
            let mut learning = |course: &'a str, learner: &'a str| {
                active.insert((tenant, days.day, course, learner));
                let l = last.entry((tenant, course, learner)).or_insert(time_us);
                *l = (*l).max(time_us);
            };
            match &e.data {
                EventData::LessonStarted(d) | EventData::LessonCompleted(d) => learning(&d.course_id, &d.learner_id),
                EventData::VideoProgressed(d) => learning(&d.course_id, &d.learner_id),
                EventData::AssessmentGraded(d) => {
                    learning(&d.course_id, &d.learner_id);
                    f.attempts.push(AttemptRow {
                        tenant: e.tenant.clone(),
                        assessment_id: d.assessment_id.clone(),
                        learner_id: d.learner_id.clone(),
                        id: e.id.clone(),
                        course_id: d.course_id.clone(),
                        day: days.day,
                        pct: d.percent(),
                    });
                }
                EventData::EnrollmentCreated(d) => {
                    f.enrollments.push(enrollment(e, &d.course_id, &d.learner_id, false, days, time_us));
                }
                EventData::EnrollmentDropped(d) => {
                    f.enrollments.push(enrollment(e, &d.course_id, &d.learner_id, true, days, time_us));
                }
                EventData::ProgressUpdated(d) => {
                    let revision = LearnerProgressRow::revision_of(d);
                    let slot = latest.entry((tenant, &d.course_id, &d.learner_id)).or_insert((revision, d));
                    if revision > slot.0 {
                        *slot = (revision, d);
                    }
                }
                EventData::PaymentSucceeded(d) => f.payments.push(PaymentRow {
                    tenant: e.tenant.clone(),
                    payment_id: d.payment_id.clone(),
                    id: e.id.clone(),
                    refund: 0,
                    day: days.day,
                    week: days.week,
                    month: days.month,
                    amount_minor: d.amount_minor,
                    currency: d.currency.clone(),
                    course_id: d.course_id.clone().unwrap_or_default(),
                }),
                EventData::PaymentRefunded(d) => f.payments.push(PaymentRow {
                    tenant: e.tenant.clone(),
                    payment_id: d.payment_id.clone(),
                    id: e.id.clone(),
                    refund: 1,
                    day: days.day,
                    week: days.week,
                    month: days.month,
                    amount_minor: d.amount_minor,
                    currency: d.currency.clone(),
                    course_id: String::new(),
                }),
                // `course.completed` is emitted once, when a learner first completes; a course
                // version that arrives later may take the completion back, so completions
                // follow the latest `progress.updated` instead (kept in `events`).
                EventData::CourseCompleted(_)
                | EventData::CoursePublished(_)
                | EventData::CourseRetired(_)
                | EventData::PaymentFailed(_)
                | EventData::AchievementUnlocked(_)
                | EventData::NotificationSent(_)
                | EventData::NotificationFailed(_)
                | EventData::LearnerErased(_) => {}
            }
        }
        f.activity_daily = active
            .into_iter()
            .map(|(tenant, day, course_id, learner_id)| {
                let (week, month) = weeks.get(&day).copied().unwrap_or((day, day));
                ActivityDayRow {
                    tenant: tenant.to_owned(),
                    day,
                    week,
                    month,
                    course_id: course_id.to_owned(),
                    learner_id: learner_id.to_owned(),
                }
            })
            .collect();
        f.course_activity = last
            .into_iter()
            .map(|((tenant, course_id, learner_id), last_us)| CourseActivityRow {
                tenant: tenant.to_owned(),
                course_id: course_id.to_owned(),
                learner_id: learner_id.to_owned(),
                last_us,
            })
            .collect();
        f.learner_progress = latest.into_iter().map(|((tenant, _, _), (_, d))| LearnerProgressRow::of(tenant, d)).collect();
        f
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// The `data` object of an event as JSON, serialised directly (without the envelope).
fn data_json(d: &EventData) -> String {
    let json = match d {
        EventData::CoursePublished(x) => serde_json::to_string(x),
        EventData::CourseRetired(x) => serde_json::to_string(x),
        EventData::EnrollmentCreated(x) => serde_json::to_string(x),
        EventData::EnrollmentDropped(x) => serde_json::to_string(x),
        EventData::LessonStarted(x) | EventData::LessonCompleted(x) => serde_json::to_string(x),
        EventData::VideoProgressed(x) => serde_json::to_string(x),
        EventData::AssessmentGraded(x) => serde_json::to_string(x),
        EventData::PaymentSucceeded(x) => serde_json::to_string(x),
        EventData::PaymentRefunded(x) => serde_json::to_string(x),
        EventData::PaymentFailed(x) => serde_json::to_string(x),
        EventData::ProgressUpdated(x) => serde_json::to_string(x),
        EventData::CourseCompleted(x) => serde_json::to_string(x),
        EventData::AchievementUnlocked(x) => serde_json::to_string(x),
        EventData::NotificationSent(x) | EventData::NotificationFailed(x) => serde_json::to_string(x),
        EventData::LearnerErased(x) => serde_json::to_string(x),
    };
    // Serialising plain data structs cannot fail; an empty object would only hide a bug.
    json.unwrap_or_else(|_| "{}".to_owned())
}

fn enrollment(e: &Event, course: &str, learner: &str, dropped: bool, days: Days, time_us: i64) -> EnrollmentRow {
    EnrollmentRow {
        tenant: e.tenant.clone(),
        course_id: course.to_owned(),
        learner_id: learner.to_owned(),
        id: e.id.clone(),
        day: days.day,
        week: days.week,
        month: days.month,
        dropped: i32::from(dropped),
        order_key: EnrollmentRow::order_key(time_us, dropped),
    }
}

#[cfg(test)]
mod tests {
    use lms_events::{EventType, examples};

    use super::*;

    #[test]
    fn day_numbers() {
        let d = NaiveDate::from_ymd_opt(1970, 1, 1).expect("date");
        assert_eq!(day_number(d), 0);
        let d = NaiveDate::from_ymd_opt(2026, 1, 1).expect("date");
        assert_eq!(day_number(d), 20454, "as ClickHouse's toInt32(toDate('2026-01-01'))");
        assert_eq!(date_of(20454), d);
        let t = DateTime::parse_from_rfc3339("2026-11-26T23:59:59Z").expect("time").with_timezone(&Utc);
        let days = Days::of(t);
        assert_eq!(date_of(days.week).to_string(), "2026-11-23");
        assert_eq!(date_of(days.month).to_string(), "2026-11-01");
        let before_epoch = DateTime::parse_from_rfc3339("1969-12-31T12:00:00Z").expect("time").with_timezone(&Utc);
        assert_eq!(Days::of(before_epoch).day, -1);
        assert_eq!(date_of(Days::of(before_epoch).week).to_string(), "1969-12-29");
    }

    #[test]
    fn enrollment_order_keys() {
        for (t, dropped) in [(0, false), (5, true), (-7, true), (1_790_000_000_000_000, false)] {
            assert_eq!(EnrollmentRow::decode_key(EnrollmentRow::order_key(t, dropped)), (dropped, t));
        }
        assert!(EnrollmentRow::order_key(10, true) > EnrollmentRow::order_key(10, false), "a drop at the same time wins");
        assert!(EnrollmentRow::order_key(11, false) > EnrollmentRow::order_key(10, true));
    }

    #[test]
    fn every_type_maps_to_its_tables() {
        let events: Vec<Event> = EventType::ALL.iter().map(|t| examples::event(*t)).collect();
        let f = Facts::from_events(&events);
        assert_eq!(f.events.len(), 17);
        assert_eq!(f.enrollments.len(), 2);
        assert_eq!(f.payments.len(), 2);
        assert_eq!(f.attempts.len(), 1);
        assert_eq!(f.learner_progress.len(), 1);
        assert!(!f.activity_daily.is_empty());
        assert!(!f.course_activity.is_empty());
        let lesson = f.events.iter().find(|r| r.event_type == "lesson.completed").expect("row");
        let data: serde_json::Value = serde_json::from_str(&lesson.data).expect("json");
        assert!(data.get("lesson_id").is_some(), "{data}");
    }

    fn progress(revision: u64, lessons_completed: u32, completed_at: Option<DateTime<Utc>>) -> Event {
        let mut e = examples::event(EventType::ProgressUpdated);
        if let EventData::ProgressUpdated(d) = &mut e.data {
            d.revision = revision;
            d.lessons_completed = lessons_completed;
            d.percent_complete = (1000.0 * f64::from(lessons_completed) / f64::from(d.lessons_total)).round() / 10.0;
            d.status = if completed_at.is_some() { ProgressStatus::Completed } else { ProgressStatus::InProgress };
            d.completed_at = completed_at;
        }
        e
    }

    /// A course version that arrived late added a lesson: the learner who had completed
    /// version 1 has not completed version 2. The row of the largest revision wins within a
    /// batch whatever the order, and carries "not completed".
    #[test]
    fn the_latest_revision_wins_even_when_it_takes_a_completion_back() {
        let at = examples::time();
        let done = progress(10, 3, Some(at));
        let reopened = progress(11, 3, None);
        for batch in [[&done, &reopened], [&reopened, &done]] {
            let f = Facts::from_events(batch);
            assert_eq!(f.learner_progress.len(), 1, "one row per learner and course and batch");
            let row = &f.learner_progress[0];
            assert_eq!((row.revision, row.completed, row.completed_us, row.day), (11, 0, 0, 0));
            assert_eq!(row.pct_tenths, 1000, "3 of 3 lessons in the example's count");
        }
        // `course.completed` alone writes no progress row: the completion is the progress's.
        let f = Facts::from_events([&examples::event(EventType::CourseCompleted)]);
        assert!(f.learner_progress.is_empty());
    }

    /// Events of processors older than revisions: the furthest percent wins among them, and
    /// any event with a revision beats them.
    #[test]
    fn events_without_a_revision_rank_by_their_percent_below_every_revision() {
        let at = examples::time();
        let old_half = progress(0, 1, None);
        let old_done = progress(0, 3, Some(at));
        let f = Facts::from_events([&old_done, &old_half]);
        assert_eq!((f.learner_progress[0].revision, f.learner_progress[0].completed), (1000, 1));
        // Real revisions are at least the µs since the epoch when computed.
        let revision = 1_794_220_200_000_000;
        let f = Facts::from_events([&old_done, &progress(revision, 1, None)]);
        assert_eq!((f.learner_progress[0].revision, f.learner_progress[0].completed), (revision, 0));
        assert_eq!(
            date_of(
                LearnerProgressRow::of(
                    "t",
                    match &old_done.data {
                        EventData::ProgressUpdated(d) => d,
                        _ => unreachable!(),
                    }
                )
                .day
            ),
            at.date_naive()
        );
    }
}
