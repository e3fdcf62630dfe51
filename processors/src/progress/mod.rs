//! Learner progress: learning and enrollment events in, progress facts in the store,
//! `progress.updated` and (once per learner and course) `course.completed` out.
//!
//! Per batch, in one transaction: advance the stored offsets (fencing a member that lost
//! its partitions), take the batch's course locks shared, write the facts aggregated in
//! memory with multi-row upserts, recompute the figures of every touched learner-course,
//! record first completions, and put the derived events in the outbox. The relay
//! produces them after the commit. The catalog, whose changes recompute the progress of a course's
//! learners under the same course locks, is the same component: [`catalog`].

pub mod catalog;
pub mod db;
pub mod model;
#[cfg(test)]
pub(crate) mod properties;
pub mod state;

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lms_bus::Record;
use lms_events::{EventData, TraceContext};
use lms_state::sql::to_us;
use lms_state::{Store, StoreError, Tx};

use self::db::{CourseDelta, Key};
use crate::stateful::{Applied, Emitted, Stage, StageError};

/// The `source` of the events this processor emits.
pub const SOURCE: &str = "lms-progress";

/// The progress processor's effects; run it as `Stateful::new(store, relay, Progress)`.
pub struct Progress;

/// What a batch changes, aggregated in memory.
#[derive(Default)]
struct Changes {
    lessons: BTreeMap<(Key, String), i64>,
    courses: BTreeMap<Key, CourseDelta>,
    /// (tenant, event id) → (key, watched ms) of video reports.
    videos: HashMap<(String, String), (Key, i64)>,
    /// Latest event time per key (the time of the `progress.updated` it causes).
    times: HashMap<Key, DateTime<Utc>>,
    /// Trace of the last event per key.
    traces: HashMap<Key, TraceContext>,
}

impl Changes {
    fn touch(&mut self, key: &Key, record: &Record) -> &mut CourseDelta {
        let t = self.times.entry(key.clone()).or_insert(record.event.time);
        if record.event.time > *t {
            *t = record.event.time;
        }
        if let Some(trace) = &record.trace {
            self.traces.insert(key.clone(), trace.clone());
        }
        self.courses.entry(key.clone()).or_default()
    }

    fn activity(&mut self, key: &Key, record: &Record) {
        let at = to_us(record.event.time);
        let d = self.touch(key, record);
        d.last_activity_us = Some(d.last_activity_us.map_or(at, |x| x.max(at)));
    }

    fn add(&mut self, record: &Record) {
        let e = &record.event;
        let key = |learner: &str, course: &str| Key { tenant: e.tenant.clone(), learner: learner.to_owned(), course: course.to_owned() };
        match &e.data {
            EventData::LessonStarted(d) => self.activity(&key(&d.learner_id, &d.course_id), record),
            EventData::LessonCompleted(d) => {
                let k = key(&d.learner_id, &d.course_id);
                self.activity(&k, record);
                let at = to_us(e.time);
                let first = self.lessons.entry((k, d.lesson_id.clone())).or_insert(at);
                *first = (*first).min(at);
            }
            EventData::VideoProgressed(d) => {
                let k = key(&d.learner_id, &d.course_id);
                self.activity(&k, record);
                self.videos.insert((e.tenant.clone(), e.id.clone()), (k, model::watched_ms(d.watched_s)));
            }
            EventData::AssessmentGraded(d) => self.activity(&key(&d.learner_id, &d.course_id), record),
            EventData::EnrollmentCreated(d) => self.enrollment(key(&d.learner_id, &d.course_id), record, "enrolled"),
            EventData::EnrollmentDropped(d) => self.enrollment(key(&d.learner_id, &d.course_id), record, "dropped"),
            _ => {}
        }
    }

    fn enrollment(&mut self, key: Key, record: &Record, state: &'static str) {
        let at = to_us(record.event.time);
        let id = record.event.id.clone();
        let d = self.touch(&key, record);
        if state == "enrolled" {
            d.first_enrolled_us = Some(d.first_enrolled_us.map_or(at, |x| x.min(at)));
        }
        // The latest event wins; at equal times a drop wins (as in the analytics store, so
        // the funnel and at-risk lists agree with progress), then the larger event id.
        let newer = d.enrollment.as_ref().is_none_or(|(t, i, s)| (at, state == "dropped", &id) > (*t, *s == "dropped", i));
        if newer {
            d.enrollment = Some((at, id, state));
        }
    }
}

/// Applies a batch of learning and enrollment records in `tx`: facts, recomputation,
/// derived events. Shared by the processor and by tests that drive the store directly.
async fn apply(store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Emitted, StoreError> {
    let mut changes = Changes::default();
    for r in records {
        changes.add(r);
    }
    if changes.courses.is_empty() {
        return Ok(Vec::new());
    }
    let mut cost = crate::cost::Stages::start("progress");
    db::lock_courses(tx, store.backend(), changes.courses.keys().map(|k| (k.tenant.as_str(), k.course.as_str())), false).await?;
    cost.mark("apply.locks");
    if !changes.videos.is_empty() {
        let ids: Vec<(String, String, String)> =
            changes.videos.iter().map(|((t, id), (key, _))| (t.clone(), id.clone(), key.learner.clone())).collect();
        let fresh = db::first_seen(tx, &ids).await?;
        for (id, (key, ms)) in &changes.videos {
            if fresh.contains(id)
                && let Some(d) = changes.courses.get_mut(key)
            {
                d.add_time_ms += ms;
            }
        }
    }
    let lessons: Vec<(Key, String, i64)> = changes.lessons.into_iter().map(|((k, l), at)| (k, l, at)).collect();
    db::upsert_lessons(tx, &lessons).await?;
    let courses: Vec<(Key, CourseDelta)> = changes.courses.into_iter().collect();
    let now = Utc::now();
    let revised = db::upsert_courses(tx, &courses, now.timestamp_micros()).await?;
    cost.mark("apply.facts");
    let keys: Vec<Key> = courses.into_iter().map(|(k, _)| k).collect();
    let events = db::recompute(tx, &keys, &revised, &changes.times, now, SOURCE).await?;
    cost.mark("apply.recompute");
    Ok(events
        .into_iter()
        .map(|e| {
            let key = e.learner_id().zip(e.course_id()).map(|(l, c)| Key {
                tenant: e.tenant.clone(),
                learner: l.to_owned(),
                course: c.to_owned(),
            });
            let trace = key.and_then(|k| changes.traces.get(&k)).map(TraceContext::child);
            (e, trace)
        })
        .collect())
}

#[async_trait]
impl Stage for Progress {
    fn name(&self) -> &'static str {
        "progress"
    }

    async fn apply(&self, store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Applied, StageError> {
        Ok(apply(store, tx, records).await?.into())
    }
}

/// `GET /v1/learners/{learner_id}/progress`.
pub async fn read(store: &Store, tenant: &str, learner: &str) -> Result<Vec<model::ProgressView>, StoreError> {
    let mut conn = store.pool().acquire().await?;
    db::read_progress(&mut conn, tenant, learner).await
}
