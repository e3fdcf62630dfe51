//! The progress and achievements oracle: every learner's progress and achievements computed
//! plainly from the distinct events (catalog by highest version, facts by event time), as
//! docs/CONTRACT.md words them. Order-insensitive: what the processors must reach whatever
//! order, duplication or crashes they saw, provided the catalog was final before the
//! learning events were processed (a course completed under version 1 and extended by
//! version 2 emits a `course.completed` that the final figures no longer show).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration as Days, Utc};
use lms_events::{Event, EventData};

/// The achievement rules the oracle evaluates (give them to the achievements processor with
/// `lms processor run --rules`).
pub const ACHIEVEMENT_RULES: &str = "achievements:
- {id: first-lesson, title: First steps, rule: first_lesson_completed}
- {id: course-completed, title: Course completed, rule: course_completed}
- {id: two-courses, title: Two courses, rule: courses_completed, count: 2}
- {id: streak-3, title: Three days, rule: learning_streak, days: 3}
- {id: perfect, title: Perfect, rule: perfect_assessment}
- {id: fast, title: Fast, rule: completed_within_days_of_enrollment, days: 10}
";

/// One learner-course as the oracle sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// `not_started`, `in_progress` or `completed`.
    pub status: &'static str,
    /// Distinct lessons of the current version completed.
    pub lessons_completed: u32,
    /// Lessons of the highest published version.
    pub lessons_total: u32,
    /// 0–100 with one decimal.
    pub percent_complete: f64,
    /// Watching time in integer milliseconds (each report capped at 300 s).
    pub time_spent_ms: i64,
    /// The latest learning event time.
    pub last_activity_at: Option<DateTime<Utc>>,
    /// When the last missing lesson was first completed.
    pub completed_at: Option<DateTime<Utc>>,
}

/// (tenant, learner id).
pub type LearnerKey = (String, String);

/// The plain computation: distinct events, catalog by highest version, facts by time.
pub struct Oracle {
    /// Learner → course id → expected progress.
    pub progress: BTreeMap<LearnerKey, BTreeMap<String, Expected>>,
    /// Learner → (achievement id, course id or "", unlocked at), learners without any left out.
    pub achievements: BTreeMap<LearnerKey, BTreeSet<(String, String, DateTime<Utc>)>>,
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("time")
}

impl Oracle {
    /// The oracle over `events`, in any order, duplicates included.
    pub fn new<'a>(events: impl IntoIterator<Item = &'a Event>) -> Oracle {
        oracle(events)
    }
}

fn oracle<'a>(events: impl IntoIterator<Item = &'a Event>) -> Oracle {
    let mut seen = BTreeSet::new();
    let mut events: Vec<&Event> = events
        .into_iter()
        .filter(|e| seen.insert((e.tenant.clone(), e.id.clone())))
        .collect();
    events.sort_by_key(|e| e.time);
    let mut catalog: HashMap<(String, String), (u32, Vec<String>)> = HashMap::new();
    #[derive(Default)]
    struct Facts {
        lessons: HashMap<String, DateTime<Utc>>,
        ms: i64,
        last: Option<DateTime<Utc>>,
        enrolled: Vec<DateTime<Utc>>,
        perfect: Option<DateTime<Utc>>,
    }
    let mut facts: BTreeMap<(String, String, String), Facts> = BTreeMap::new();
    let mut days: BTreeMap<LearnerKey, BTreeMap<chrono::NaiveDate, DateTime<Utc>>> = BTreeMap::new();
    for e in &events {
        let t = micros(e.time);
        match &e.data {
            EventData::CoursePublished(d) => {
                let lessons: Vec<String> = d.modules.iter().flat_map(|m| m.lessons.clone()).collect();
                let entry = catalog.entry((e.tenant.clone(), d.course_id.clone())).or_insert((0, Vec::new()));
                if d.version > entry.0 {
                    *entry = (d.version, lessons);
                }
                continue;
            }
            EventData::EnrollmentCreated(d) => {
                let f = facts.entry((e.tenant.clone(), d.learner_id.clone(), d.course_id.clone())).or_default();
                f.enrolled.push(t);
            }
            EventData::EnrollmentDropped(d) => {
                facts.entry((e.tenant.clone(), d.learner_id.clone(), d.course_id.clone())).or_default();
            }
            _ => {}
        }
        if e.event_type().is_learning_activity() {
            let (learner, course) = (e.learner_id().expect("learner"), e.course_id().expect("course"));
            let f = facts.entry((e.tenant.clone(), learner.to_owned(), course.to_owned())).or_default();
            f.last = Some(f.last.map_or(t, |x| x.max(t)));
            days.entry((e.tenant.clone(), learner.to_owned())).or_default().entry(t.date_naive()).or_insert(t);
            match &e.data {
                EventData::LessonCompleted(d) => {
                    f.lessons.entry(d.lesson_id.clone()).or_insert(t);
                }
                EventData::VideoProgressed(d) => f.ms += (d.watched_s.clamp(0.0, 300.0) * 1000.0).round() as i64,
                EventData::AssessmentGraded(d) if d.score >= d.max_score => {
                    f.perfect.get_or_insert(t);
                }
                _ => {}
            }
        }
    }
    let mut progress: BTreeMap<LearnerKey, BTreeMap<String, Expected>> = BTreeMap::new();
    let mut achievements: BTreeMap<LearnerKey, BTreeSet<(String, String, DateTime<Utc>)>> = BTreeMap::new();
    for ((tenant, learner, course), f) in &facts {
        let lessons = catalog.get(&(tenant.clone(), course.clone())).map(|c| c.1.clone()).unwrap_or_default();
        let done: Vec<DateTime<Utc>> = lessons.iter().filter_map(|l| f.lessons.get(l).copied()).collect();
        let complete = !lessons.is_empty() && done.len() == lessons.len();
        let expected = Expected {
            status: if complete {
                "completed"
            } else if f.last.is_some() {
                "in_progress"
            } else {
                "not_started"
            },
            lessons_completed: done.len() as u32,
            lessons_total: lessons.len() as u32,
            percent_complete: if lessons.is_empty() {
                0.0
            } else {
                (done.len() as f64 * 1000.0 / lessons.len() as f64).round() / 10.0
            },
            time_spent_ms: f.ms,
            last_activity_at: f.last,
            completed_at: if complete { done.iter().max().copied() } else { None },
        };
        let key = (tenant.clone(), learner.clone());
        let a = achievements.entry(key.clone()).or_default();
        if let Some(at) = expected.completed_at {
            a.insert(("course-completed".into(), course.clone(), at));
            // Completed within 10 days of the last enrolment before the completion.
            if f.enrolled.iter().filter(|e| **e <= at).max().is_some_and(|e| at - *e <= Days::days(10)) {
                a.insert(("fast".into(), course.clone(), at));
            }
        }
        if let Some(at) = f.perfect {
            a.insert(("perfect".into(), course.clone(), at));
        }
        progress.entry(key).or_default().insert(course.clone(), expected);
    }
    for (key, courses) in &progress {
        let a = achievements.entry(key.clone()).or_default();
        let first = facts
            .iter()
            .filter(|((t, l, _), _)| (t, l) == (&key.0, &key.1))
            .flat_map(|(_, f)| f.lessons.values().copied())
            .min();
        if let Some(at) = first {
            a.insert(("first-lesson".into(), String::new(), at));
        }
        let mut completions: Vec<DateTime<Utc>> = courses.values().filter_map(|e| e.completed_at).collect();
        completions.sort();
        if let Some(at) = completions.get(1) {
            a.insert(("two-courses".into(), String::new(), *at));
        }
        let mut run = 0;
        let mut previous: Option<chrono::NaiveDate> = None;
        for (day, at) in days.get(key).into_iter().flatten() {
            run = if previous.map(|p| p + Days::days(1)) == Some(*day) { run + 1 } else { 1 };
            previous = Some(*day);
            if run == 3 {
                a.insert(("streak-3".into(), String::new(), *at));
                break;
            }
        }
    }
    achievements.retain(|_, a| !a.is_empty());
    Oracle { progress, achievements }
}

