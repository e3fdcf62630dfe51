//! The progress and achievements oracle: every learner's progress and achievements computed
//! plainly from the distinct events (catalog by highest version, facts by event time), as
//! docs/CONTRACT.md words them. Order-insensitive within a phase: what the processors must
//! reach whatever order, duplication or crashes they saw.
//!
//! Progress is a function of the events alone: the figures follow the highest version
//! whenever it arrived, also when it arrived after the activity. What was emitted on the
//! way is not: a learner who completed version 1 before version 2 (one more lesson)
//! arrived got `course.completed` and its achievements, which are never taken back
//! (CONTRACT.md, "Meanings"). [`Oracle::phased`] models that: the events arrive in phases
//! that end at quiet moments (every group caught up), and what was unlocked or emitted at
//! the end of one phase stays. [`derived_in_order`] gives the derived events a progress
//! processor emits for one arrival order, for tests that feed the analytics directly.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration as Days, Utc};
use lms_events::data::{CourseCompleted, ProgressStatus, ProgressUpdated};
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

/// (tenant, learner id, course id).
pub type CourseKey = (String, String, String);

/// The plain computation: distinct events, catalog by highest version, facts by time.
#[derive(Debug, Clone, Default)]
pub struct Oracle {
    /// Learner → course id → expected progress.
    pub progress: BTreeMap<LearnerKey, BTreeMap<String, Expected>>,
    /// Learner → (achievement id, course id or "", unlocked at), learners without any left out.
    pub achievements: BTreeMap<LearnerKey, BTreeSet<(String, String, DateTime<Utc>)>>,
    /// Learner-courses for which `course.completed` was emitted (complete at the end of some
    /// phase), with the phase's completion time.
    pub completed_once: BTreeMap<CourseKey, DateTime<Utc>>,
    /// Learner-courses whose percentage went down from one phase to a later one (a course
    /// version that arrived late added lessons).
    pub lowered: BTreeSet<CourseKey>,
    /// The highest percentage each learner-course showed at the end of a phase.
    pub furthest: BTreeMap<CourseKey, f64>,
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("time")
}

impl Oracle {
    /// The oracle over `events`, in any order, duplicates included, all in one phase.
    pub fn new<'a>(events: impl IntoIterator<Item = &'a Event>) -> Oracle {
        let events: Vec<&Event> = events.into_iter().collect();
        Oracle::phased(&[events])
    }

    /// The oracle of events that arrived in `phases`, each ending at a quiet moment (every
    /// processor caught up): progress follows all the events; `course.completed` follows
    /// what each phase's end showed, and stays once given. Achievements are those of the
    /// achievements processor: a learner's rules are evaluated again (and their times
    /// updated) when an event of the learner arrives or a course of theirs is complete
    /// under a new version; an unlock is never taken back, and its completion facts
    /// outlive a completion that a later version took back.
    pub fn phased(phases: &[Vec<&Event>]) -> Oracle {
        let mut o = Oracle::default();
        let mut facts = Facts::default();
        // (tenant, learner, course) → completion time the achievements processor holds:
        // that of the last phase that ended with the course completed.
        let mut completion_facts: BTreeMap<CourseKey, DateTime<Utc>> = BTreeMap::new();
        let mut unlocked: BTreeMap<LearnerKey, BTreeMap<(String, String), DateTime<Utc>>> = BTreeMap::new();
        let mut previous: HashMap<CourseKey, f64> = HashMap::new();
        for phase in phases {
            let (touched, republished) = facts.add(phase.iter().copied());
            let progress = facts.progress();
            let republished: HashSet<(String, String)> = republished.into_iter().collect();
            let mut evaluated: HashSet<LearnerKey> = touched.into_iter().map(|(t, l, _)| (t, l)).collect();
            for ((tenant, learner), courses) in &progress {
                for (course, e) in courses {
                    let key = (tenant.clone(), learner.clone(), course.clone());
                    if previous.get(&key).is_some_and(|p| e.percent_complete < *p) {
                        o.lowered.insert(key.clone());
                    }
                    previous.insert(key.clone(), e.percent_complete);
                    let furthest = o.furthest.entry(key.clone()).or_insert(e.percent_complete);
                    *furthest = furthest.max(e.percent_complete);
                    if let Some(at) = e.completed_at {
                        completion_facts.insert(key.clone(), at);
                        if republished.contains(&(tenant.clone(), course.clone())) {
                            evaluated.insert((tenant.clone(), learner.clone()));
                        }
                        o.completed_once.entry(key).or_insert(at);
                    }
                }
            }
            for (learner, set) in facts.achievements(&progress, &completion_facts) {
                if !evaluated.contains(&learner) {
                    continue;
                }
                let mine = unlocked.entry(learner).or_default();
                for (achievement, course, at) in set {
                    mine.insert((achievement, course), at);
                }
            }
            o.progress = progress;
        }
        o.achievements = unlocked
            .into_iter()
            .map(|(k, m)| (k, m.into_iter().map(|((a, c), at)| (a, c, at)).collect::<BTreeSet<_>>()))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        o
    }
}

/// One learner-course's facts.
#[derive(Debug, Clone, Default)]
struct CourseFacts {
    lessons: HashMap<String, DateTime<Utc>>,
    ms: i64,
    last: Option<DateTime<Utc>>,
    enrolled: Vec<DateTime<Utc>>,
    perfect: Option<DateTime<Utc>>,
}

/// Everything known of the distinct events added so far.
#[derive(Debug, Default)]
struct Facts {
    seen: HashSet<(String, String)>,
    /// (tenant, course) → (version, lessons) of the highest version.
    catalog: HashMap<(String, String), (u32, Vec<String>)>,
    courses: BTreeMap<CourseKey, CourseFacts>,
    /// Learner → day → first learning event time that day.
    days: BTreeMap<LearnerKey, BTreeMap<chrono::NaiveDate, DateTime<Utc>>>,
}

/// The lessons of a publication, in course order, without repeats.
fn lessons_of(d: &lms_events::data::CoursePublished) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in d.modules.iter().flat_map(|m| &m.lessons) {
        if !out.contains(l) {
            out.push(l.clone());
        }
    }
    out
}

impl Facts {
    /// Adds events (duplicates are skipped); returns the learner-courses they touch, and
    /// the courses whose catalog entry changed.
    fn add<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> (Vec<CourseKey>, Vec<(String, String)>) {
        let mut touched = Vec::new();
        let mut republished = Vec::new();
        for e in events {
            if !self.seen.insert((e.tenant.clone(), e.id.clone())) {
                continue;
            }
            let t = micros(e.time);
            match &e.data {
                EventData::CoursePublished(d) => {
                    let lessons = lessons_of(d);
                    let key = (e.tenant.clone(), d.course_id.clone());
                    let entry = self.catalog.entry(key.clone()).or_insert((0, Vec::new()));
                    // Highest version; equal versions by content (its JSON), as the catalog does.
                    let json = |l: &[String]| serde_json::to_string(l).unwrap_or_default();
                    if (d.version, json(&lessons)) > (entry.0, json(&entry.1)) {
                        *entry = (d.version, lessons);
                        republished.push(key);
                    }
                    continue;
                }
                EventData::EnrollmentCreated(d) => {
                    let key = (e.tenant.clone(), d.learner_id.clone(), d.course_id.clone());
                    self.courses.entry(key.clone()).or_default().enrolled.push(t);
                    touched.push(key);
                }
                EventData::EnrollmentDropped(d) => {
                    let key = (e.tenant.clone(), d.learner_id.clone(), d.course_id.clone());
                    self.courses.entry(key.clone()).or_default();
                    touched.push(key);
                }
                _ => {}
            }
            if e.event_type().is_learning_activity() {
                let (learner, course) = (e.learner_id().expect("learner"), e.course_id().expect("course"));
                let key = (e.tenant.clone(), learner.to_owned(), course.to_owned());
                let f = self.courses.entry(key.clone()).or_default();
                f.last = Some(f.last.map_or(t, |x| x.max(t)));
                let day = self.days.entry((e.tenant.clone(), learner.to_owned())).or_default().entry(t.date_naive()).or_insert(t);
                *day = (*day).min(t);
                match &e.data {
                    EventData::LessonCompleted(d) => {
                        let first = f.lessons.entry(d.lesson_id.clone()).or_insert(t);
                        *first = (*first).min(t);
                    }
                    EventData::VideoProgressed(d) => f.ms += (d.watched_s.clamp(0.0, 300.0) * 1000.0).round() as i64,
                    EventData::AssessmentGraded(d) if d.score >= d.max_score => {
                        let first = f.perfect.get_or_insert(t);
                        *first = (*first).min(t);
                    }
                    _ => {}
                }
                touched.push(key);
            }
        }
        (touched, republished)
    }

    /// The figures of one learner-course.
    fn expected(&self, key: &CourseKey) -> Expected {
        let empty = CourseFacts::default();
        let f = self.courses.get(key).unwrap_or(&empty);
        let lessons = self.catalog.get(&(key.0.clone(), key.2.clone())).map(|c| c.1.as_slice()).unwrap_or_default();
        let done: Vec<DateTime<Utc>> = lessons.iter().filter_map(|l| f.lessons.get(l).copied()).collect();
        let complete = !lessons.is_empty() && done.len() == lessons.len();
        Expected {
            status: if complete {
                "completed"
            } else if f.last.is_some() {
                "in_progress"
            } else {
                "not_started"
            },
            lessons_completed: done.len() as u32,
            lessons_total: lessons.len() as u32,
            percent_complete: if lessons.is_empty() { 0.0 } else { (done.len() as f64 * 1000.0 / lessons.len() as f64).round() / 10.0 },
            time_spent_ms: f.ms,
            last_activity_at: f.last,
            completed_at: if complete { done.iter().max().copied() } else { None },
        }
    }

    /// Every learner-course's figures.
    fn progress(&self) -> BTreeMap<LearnerKey, BTreeMap<String, Expected>> {
        let mut out: BTreeMap<LearnerKey, BTreeMap<String, Expected>> = BTreeMap::new();
        for key in self.courses.keys() {
            out.entry((key.0.clone(), key.1.clone())).or_default().insert(key.2.clone(), self.expected(key));
        }
        out
    }

    /// The achievements the rules give for these facts, with the completions the
    /// achievements processor holds (`completions`, which may outlive a completion that a
    /// later course version took back).
    fn achievements(
        &self,
        progress: &BTreeMap<LearnerKey, BTreeMap<String, Expected>>,
        completions: &BTreeMap<CourseKey, DateTime<Utc>>,
    ) -> BTreeMap<LearnerKey, BTreeSet<(String, String, DateTime<Utc>)>> {
        let mut achievements: BTreeMap<LearnerKey, BTreeSet<(String, String, DateTime<Utc>)>> = BTreeMap::new();
        for (key, f) in &self.courses {
            let learner = (key.0.clone(), key.1.clone());
            let a = achievements.entry(learner).or_default();
            if let Some(at) = completions.get(key).copied() {
                a.insert(("course-completed".into(), key.2.clone(), at));
                // Completed within 10 days of the last enrolment before the completion.
                if f.enrolled.iter().filter(|e| **e <= at).max().is_some_and(|e| at - *e <= Days::days(10)) {
                    a.insert(("fast".into(), key.2.clone(), at));
                }
            }
            if let Some(at) = f.perfect {
                a.insert(("perfect".into(), key.2.clone(), at));
            }
        }
        for key in progress.keys() {
            let a = achievements.entry(key.clone()).or_default();
            let mine =
                self.courses.range((key.0.clone(), key.1.clone(), String::new())..).take_while(|((t, l, _), _)| (t, l) == (&key.0, &key.1));
            let first = mine.flat_map(|(_, f)| f.lessons.values().copied()).min();
            if let Some(at) = first {
                a.insert(("first-lesson".into(), String::new(), at));
            }
            let mut times: Vec<DateTime<Utc>> = completions
                .range((key.0.clone(), key.1.clone(), String::new())..)
                .take_while(|((t, l, _), _)| (t, l) == (&key.0, &key.1))
                .map(|(_, at)| *at)
                .collect();
            times.sort();
            if let Some(at) = times.get(1) {
                a.insert(("two-courses".into(), String::new(), *at));
            }
            let mut run = 0;
            let mut previous: Option<chrono::NaiveDate> = None;
            for (day, at) in self.days.get(key).into_iter().flatten() {
                run = if previous.map(|p| p + Days::days(1)) == Some(*day) { run + 1 } else { 1 };
                previous = Some(*day);
                if run == 3 {
                    a.insert(("streak-3".into(), String::new(), *at));
                    break;
                }
            }
        }
        achievements.retain(|_, a| !a.is_empty());
        achievements
    }
}

/// The derived events a progress processor emits when the events arrive one by one in this
/// order (duplicates included): after each event, one `progress.updated` per learner-course
/// it changes (all learners of a course whose catalog entry changed), numbered by a
/// revision that only grows, and `course.completed` the first time a learner-course is
/// complete. What the analytics must reduce to the learners' final figures.
pub fn derived_in_order<'a>(events: impl IntoIterator<Item = &'a Event>, source: &str) -> Vec<Event> {
    let mut facts = Facts::default();
    let mut completed: HashSet<CourseKey> = HashSet::new();
    let mut revision: u64 = 1_000_000;
    let mut out = Vec::new();
    for e in events {
        let (mut touched, republished) = facts.add([e]);
        for (tenant, course) in republished {
            touched.extend(facts.courses.keys().filter(|k| k.0 == tenant && k.2 == course).cloned());
        }
        touched.sort();
        touched.dedup();
        for key in touched {
            let x = facts.expected(&key);
            revision += 1;
            let data = ProgressUpdated {
                learner_id: key.1.clone(),
                course_id: key.2.clone(),
                course_version: facts.catalog.get(&(key.0.clone(), key.2.clone())).map_or(0, |c| c.0),
                lessons_completed: x.lessons_completed,
                lessons_total: x.lessons_total,
                percent_complete: x.percent_complete,
                status: match x.status {
                    "completed" => ProgressStatus::Completed,
                    "in_progress" => ProgressStatus::InProgress,
                    _ => ProgressStatus::NotStarted,
                },
                time_spent_s: x.time_spent_ms as f64 / 1000.0,
                last_activity_at: x.last_activity_at,
                completed_at: x.completed_at,
                revision,
            };
            let course_version = data.course_version;
            out.push(Event::derived(&key.0, source, e.time, EventData::ProgressUpdated(data)));
            if let Some(at) = x.completed_at
                && completed.insert(key.clone())
            {
                let data = CourseCompleted { learner_id: key.1.clone(), course_id: key.2.clone(), course_version, completed_at: at };
                out.push(Event::derived(&key.0, source, at, EventData::CourseCompleted(data)));
            }
        }
    }
    out
}
