//! Progress facts and catalog in the store: set-based writes (one multi-row statement
//! per table and chunk, never one round trip per event) and bulk reads.
//!
//! Every write is order-insensitive and idempotent: lessons keep their earliest
//! completion, activity its latest time, enrollment the state of its latest event (at
//! equal times a drop wins, then the larger event id: the rule of the analytics store),
//! and watching time is added only for report ids never seen before.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use lms_events::data::{CourseCompleted, ProgressStatus};
use lms_events::{Event, EventData};
use lms_state::sql::{CHUNK_ROWS, from_us, lock_key, values};
use lms_state::{Backend, StoreError};
use sqlx::{AnyConnection, Row as _};

use super::model::{CatalogCourse, CourseFacts, ProgressView, compute};
use crate::derived_id;

/// Tenant, learner, course.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Tenant.
    pub tenant: String,
    /// Learner.
    pub learner: String,
    /// Course.
    pub course: String,
}

/// Changes of one learner-course row in a batch, aggregated in memory.
#[derive(Debug, Clone, Default)]
pub struct CourseDelta {
    /// Watching time of reports not seen before, ms.
    pub add_time_ms: i64,
    /// Latest learning event time, µs.
    pub last_activity_us: Option<i64>,
    /// Earliest enrollment time, µs.
    pub first_enrolled_us: Option<i64>,
    /// Latest enrollment event: (time µs, event id, state).
    pub enrollment: Option<(i64, String, &'static str)>,
}

/// Advisory-lock key of a course: progress batches take it shared, catalog changes
/// exclusive, so a course arriving concurrently with a learner's last lesson is seen by
/// one of the two transactions (else neither would emit `course.completed`).
pub fn course_lock(tenant: &str, course: &str) -> i64 {
    lock_key("course", &[tenant, course])
}

/// Records which of `ids` (tenant, event id, learner) are seen for the first time, and
/// returns them as (tenant, event id). The learner is kept so that an erasure removes the
/// learner's rows here too.
pub async fn first_seen(conn: &mut AnyConnection, ids: &[(String, String, String)]) -> Result<HashSet<(String, String)>, StoreError> {
    let mut fresh = HashSet::new();
    for chunk in ids.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO progress_seen (tenant, event_id, learner_id) VALUES {} ON CONFLICT (tenant, event_id) DO NOTHING RETURNING tenant, event_id",
            values(chunk.len(), 3, 1)
        );
        let mut q = sqlx::query(&sql);
        for (t, id, learner) in chunk {
            q = q.bind(t.as_str()).bind(id.as_str()).bind(learner.as_str());
        }
        for row in q.fetch_all(&mut *conn).await? {
            fresh.insert((row.try_get(0)?, row.try_get(1)?));
        }
    }
    Ok(fresh)
}

/// Keeps the earliest completion of each lesson.
pub async fn upsert_lessons(conn: &mut AnyConnection, rows: &[(Key, String, i64)]) -> Result<(), StoreError> {
    for chunk in rows.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO progress_lessons (tenant, learner_id, course_id, lesson_id, first_completed_at_us) VALUES {} \
             ON CONFLICT (tenant, learner_id, course_id, lesson_id) DO UPDATE SET first_completed_at_us = \
             CASE WHEN excluded.first_completed_at_us < progress_lessons.first_completed_at_us \
             THEN excluded.first_completed_at_us ELSE progress_lessons.first_completed_at_us END",
            values(chunk.len(), 5, 1)
        );
        let mut q = sqlx::query(&sql);
        for (k, lesson, at) in chunk {
            q = q.bind(k.tenant.as_str()).bind(k.learner.as_str()).bind(k.course.as_str()).bind(lesson.as_str()).bind(*at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A learner-course row as this transaction left it: the facts kept on the row and the
/// revision its recomputation takes (see [`revise`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Revised {
    /// Sum of the capped watching time, ms.
    pub time_spent_ms: i64,
    /// Latest learning event time, µs.
    pub last_activity_us: Option<i64>,
    /// The revision of the figures about to be computed.
    pub revision: u64,
}

/// Applies the aggregated changes of learner-course rows (creating them) and takes their
/// next revision in the same statement, returning each row as it now stands: the
/// recomputation needs no second write and no second read of these rows (on a wide batch
/// those were a third of its statements). The revision rule is [`revise`]'s.
pub async fn upsert_courses(
    conn: &mut AnyConnection,
    rows: &[(Key, CourseDelta)],
    now_us: i64,
) -> Result<HashMap<Key, Revised>, StoreError> {
    let mut out = HashMap::with_capacity(rows.len());
    for chunk in rows.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO progress_courses (tenant, learner_id, course_id, time_spent_ms, last_activity_at_us, \
             first_enrolled_at_us, enrollment_at_us, enrollment_event_id, enrollment_state, revision) VALUES {} \
             ON CONFLICT (tenant, learner_id, course_id) DO UPDATE SET \
             time_spent_ms = progress_courses.time_spent_ms + excluded.time_spent_ms, \
             last_activity_at_us = CASE WHEN excluded.last_activity_at_us IS NULL THEN progress_courses.last_activity_at_us \
               WHEN progress_courses.last_activity_at_us IS NULL OR excluded.last_activity_at_us > progress_courses.last_activity_at_us \
               THEN excluded.last_activity_at_us ELSE progress_courses.last_activity_at_us END, \
             first_enrolled_at_us = CASE WHEN excluded.first_enrolled_at_us IS NULL THEN progress_courses.first_enrolled_at_us \
               WHEN progress_courses.first_enrolled_at_us IS NULL OR excluded.first_enrolled_at_us < progress_courses.first_enrolled_at_us \
               THEN excluded.first_enrolled_at_us ELSE progress_courses.first_enrolled_at_us END, \
             enrollment_state = CASE WHEN {newer} THEN excluded.enrollment_state ELSE progress_courses.enrollment_state END, \
             enrollment_event_id = CASE WHEN {newer} THEN excluded.enrollment_event_id ELSE progress_courses.enrollment_event_id END, \
             enrollment_at_us = CASE WHEN {newer} THEN excluded.enrollment_at_us ELSE progress_courses.enrollment_at_us END, \
             revision = CASE WHEN progress_courses.revision >= excluded.revision THEN progress_courses.revision + 1 ELSE excluded.revision END \
             RETURNING tenant, learner_id, course_id, time_spent_ms, last_activity_at_us, revision",
            values(chunk.len(), 10, 1),
            newer = "(excluded.enrollment_at_us IS NOT NULL AND (progress_courses.enrollment_at_us IS NULL \
                     OR excluded.enrollment_at_us > progress_courses.enrollment_at_us \
                     OR (excluded.enrollment_at_us = progress_courses.enrollment_at_us \
                         AND ((excluded.enrollment_state = 'dropped' AND progress_courses.enrollment_state <> 'dropped') \
                              OR (excluded.enrollment_state = progress_courses.enrollment_state \
                                  AND excluded.enrollment_event_id > progress_courses.enrollment_event_id)))))",
        );
        let mut q = sqlx::query(&sql);
        for (k, d) in chunk {
            let (at, id, state) = match &d.enrollment {
                Some((at, id, state)) => (Some(*at), Some(id.as_str()), Some(*state)),
                None => (None, None, None),
            };
            q = q
                .bind(k.tenant.as_str())
                .bind(k.learner.as_str())
                .bind(k.course.as_str())
                .bind(d.add_time_ms)
                .bind(d.last_activity_us)
                .bind(d.first_enrolled_us)
                .bind(at)
                .bind(id)
                .bind(state)
                .bind(now_us);
        }
        collect_revised(q.fetch_all(&mut *conn).await?, &mut out)?;
    }
    Ok(out)
}

fn collect_revised(rows: Vec<sqlx::any::AnyRow>, out: &mut HashMap<Key, Revised>) -> Result<(), StoreError> {
    for row in rows {
        let revision: i64 = row.try_get(5)?;
        out.insert(
            key_of(&row)?,
            Revised {
                time_spent_ms: row.try_get(3)?,
                last_activity_us: row.try_get(4)?,
                revision: u64::try_from(revision).unwrap_or_default(),
            },
        );
    }
    Ok(())
}

/// The catalog entries of `courses` (tenant, course) that exist.
pub async fn load_catalog(
    conn: &mut AnyConnection,
    courses: &[(String, String)],
) -> Result<HashMap<(String, String), CatalogCourse>, StoreError> {
    let mut out = HashMap::new();
    for chunk in courses.chunks(CHUNK_ROWS) {
        let sql = format!(
            "SELECT tenant, course_id, version, lessons FROM catalog_courses WHERE (tenant, course_id) IN (VALUES {})",
            values(chunk.len(), 2, 1)
        );
        let mut q = sqlx::query(&sql);
        for (t, c) in chunk {
            q = q.bind(t.as_str()).bind(c.as_str());
        }
        for row in q.fetch_all(&mut *conn).await? {
            let version: i64 = row.try_get(2)?;
            let lessons: String = row.try_get(3)?;
            let lessons: Vec<String> = serde_json::from_str(&lessons).map_err(|e| StoreError::Corrupt(format!("catalog lessons: {e}")))?;
            out.insert((row.try_get(0)?, row.try_get(1)?), CatalogCourse { version: u32::try_from(version).unwrap_or(u32::MAX), lessons });
        }
    }
    Ok(out)
}

/// Rows of `select` (a `SELECT … FROM …` whose first three columns are tenant, learner and
/// course) for `keys`, one statement per chunk of keys.
async fn rows_of(conn: &mut AnyConnection, select: &str, keys: &[Key]) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
    let mut rows = Vec::new();
    for chunk in keys.chunks(CHUNK_ROWS) {
        let sql = format!("{select} WHERE (tenant, learner_id, course_id) IN (VALUES {})", values(chunk.len(), 3, 1));
        let mut q = sqlx::query(&sql);
        for k in chunk {
            q = q.bind(k.tenant.as_str()).bind(k.learner.as_str()).bind(k.course.as_str());
        }
        rows.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

fn key_of(row: &sqlx::any::AnyRow) -> Result<Key, sqlx::Error> {
    Ok(Key { tenant: row.try_get(0)?, learner: row.try_get(1)?, course: row.try_get(2)? })
}

/// The facts of `keys`; keys without a learner-course row are absent.
pub async fn load_facts(conn: &mut AnyConnection, keys: &[Key]) -> Result<HashMap<Key, CourseFacts>, StoreError> {
    let mut out: HashMap<Key, CourseFacts> = HashMap::with_capacity(keys.len());
    let select = "SELECT tenant, learner_id, course_id, time_spent_ms, last_activity_at_us FROM progress_courses";
    for row in rows_of(conn, select, keys).await? {
        let last: Option<i64> = row.try_get(4)?;
        let facts =
            CourseFacts { lessons: HashMap::new(), time_spent_ms: row.try_get(3)?, last_activity_at: last.map(from_us).transpose()? };
        out.insert(key_of(&row)?, facts);
    }
    for (key, lessons) in load_lessons(conn, keys).await? {
        out.entry(key).or_default().lessons = lessons;
    }
    Ok(out)
}

/// The completed lessons of `keys`, with the time each was first completed; keys without
/// one are absent.
pub async fn load_lessons(conn: &mut AnyConnection, keys: &[Key]) -> Result<HashMap<Key, HashMap<String, DateTime<Utc>>>, StoreError> {
    let mut out: HashMap<Key, HashMap<String, DateTime<Utc>>> = HashMap::with_capacity(keys.len());
    let select = "SELECT tenant, learner_id, course_id, lesson_id, first_completed_at_us FROM progress_lessons";
    for row in rows_of(conn, select, keys).await? {
        let at = from_us(row.try_get(4)?)?;
        out.entry(key_of(&row)?).or_default().insert(row.try_get(3)?, at);
    }
    Ok(out)
}

/// Recomputes the figures of `keys` inside the transaction, records new completions, and
/// returns the derived events to put in the outbox: one `progress.updated` per key, and
/// `course.completed` for each learner-course completed for the first time. `revised`
/// holds each key's row as this transaction left it ([`upsert_courses`] or [`revise`]);
/// `now` is the time of those revisions.
pub async fn recompute(
    conn: &mut AnyConnection,
    keys: &[Key],
    revised: &HashMap<Key, Revised>,
    event_time: &HashMap<Key, DateTime<Utc>>,
    now: DateTime<Utc>,
    source: &str,
) -> Result<Vec<Event>, StoreError> {
    let mut courses: Vec<(String, String)> = keys.iter().map(|k| (k.tenant.clone(), k.course.clone())).collect();
    courses.sort_unstable();
    courses.dedup();
    let catalog = load_catalog(conn, &courses).await?;
    let mut lessons = load_lessons(conn, keys).await?;
    let mut events = Vec::with_capacity(keys.len());
    let mut completed: Vec<(&Key, ProgressView)> = Vec::new();
    for k in keys {
        // Every key has its row: progress batches upsert it first, catalog changes read the
        // keys from it. A missing one is a bug, not a revision 0 (which would rank as an
        // event of an older processor).
        let row = revised.get(k).ok_or_else(|| StoreError::Corrupt(format!("no progress_courses row to revise for {k:?}")))?;
        let facts = CourseFacts {
            lessons: lessons.remove(k).unwrap_or_default(),
            time_spent_ms: row.time_spent_ms,
            last_activity_at: row.last_activity_us.map(from_us).transpose()?,
        };
        let view = compute(&k.course, &facts, catalog.get(&(k.tenant.clone(), k.course.clone())));
        let time = event_time.get(k).copied().unwrap_or(now);
        let data = view.to_event_data(&k.learner, row.revision);
        events.push(Event::derived(&k.tenant, source, time, EventData::ProgressUpdated(data)));
        if view.status == ProgressStatus::Completed {
            completed.push((k, view));
        }
    }
    for chunk in completed.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO course_completions (tenant, learner_id, course_id, completed_at_us, course_version) VALUES {} \
             ON CONFLICT (tenant, learner_id, course_id) DO NOTHING RETURNING tenant, learner_id, course_id",
            values(chunk.len(), 5, 1)
        );
        let mut q = sqlx::query(&sql);
        for (k, v) in chunk {
            let at = v.completed_at.map(lms_state::sql::to_us).unwrap_or_default();
            q = q.bind(k.tenant.as_str()).bind(k.learner.as_str()).bind(k.course.as_str()).bind(at).bind(i64::from(v.course_version));
        }
        let fresh: HashSet<Key> = q
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|r| Ok(Key { tenant: r.try_get(0)?, learner: r.try_get(1)?, course: r.try_get(2)? }))
            .collect::<Result<_, sqlx::Error>>()?;
        for (k, v) in chunk {
            if let (true, Some(at)) = (fresh.contains(*k), v.completed_at) {
                let data = CourseCompleted {
                    learner_id: k.learner.clone(),
                    course_id: k.course.clone(),
                    course_version: v.course_version,
                    completed_at: at,
                };
                let id = derived_id("course.completed", &[&k.tenant, &k.learner, &k.course]);
                events.push(Event::derived(&k.tenant, source, at, EventData::CourseCompleted(data)).with_id(id));
            }
        }
    }
    Ok(events)
}

/// Takes the next revision of each of `keys` (learner-course rows that exist): one more than
/// the stored one, and at least `now_us`, so revisions only grow, also across a store
/// rebuilt from the topics (see [`lms_events::data::ProgressUpdated::revision`]); returns
/// the rows as they now stand. The row lock it takes orders two transactions recomputing
/// one key: the later commits the larger revision, and its figures were computed after the
/// earlier one's facts were visible (progress batches hold the row from their fact upsert,
/// which takes the revision itself; catalog changes hold the course lock exclusively).
pub async fn revise(conn: &mut AnyConnection, keys: &[Key], now_us: i64) -> Result<HashMap<Key, Revised>, StoreError> {
    let mut out = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK_ROWS) {
        let sql = format!(
            "UPDATE progress_courses SET revision = CASE WHEN revision >= $1 THEN revision + 1 ELSE $1 END \
             WHERE (tenant, learner_id, course_id) IN (VALUES {}) \
             RETURNING tenant, learner_id, course_id, time_spent_ms, last_activity_at_us, revision",
            values(chunk.len(), 3, 2)
        );
        let mut q = sqlx::query(&sql).bind(now_us);
        for k in chunk {
            q = q.bind(k.tenant.as_str()).bind(k.learner.as_str()).bind(k.course.as_str());
        }
        collect_revised(q.fetch_all(&mut *conn).await?, &mut out)?;
    }
    Ok(out)
}

/// Every learner with a row in `course` of `tenant` (for recomputation when the catalog changes).
pub async fn learners_of(conn: &mut AnyConnection, tenant: &str, course: &str) -> Result<Vec<Key>, StoreError> {
    let rows = sqlx::query("SELECT learner_id FROM progress_courses WHERE tenant = $1 AND course_id = $2 ORDER BY learner_id")
        .bind(tenant)
        .bind(course)
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter()
        .map(|r| Ok(Key { tenant: tenant.to_owned(), learner: r.try_get(0)?, course: course.to_owned() }))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// `GET /v1/learners/{id}/progress`: every course the learner enrolled in or has activity
/// in, ordered by course id.
pub async fn read_progress(conn: &mut AnyConnection, tenant: &str, learner: &str) -> Result<Vec<ProgressView>, StoreError> {
    let rows = sqlx::query("SELECT course_id FROM progress_courses WHERE tenant = $1 AND learner_id = $2 ORDER BY course_id")
        .bind(tenant)
        .bind(learner)
        .fetch_all(&mut *conn)
        .await?;
    let keys: Vec<Key> = rows
        .into_iter()
        .map(|r| Ok(Key { tenant: tenant.to_owned(), learner: learner.to_owned(), course: r.try_get(0)? }))
        .collect::<Result<_, sqlx::Error>>()?;
    let courses: Vec<(String, String)> = keys.iter().map(|k| (k.tenant.clone(), k.course.clone())).collect();
    let catalog = load_catalog(conn, &courses).await?;
    let facts = load_facts(conn, &keys).await?;
    let empty = CourseFacts::default();
    Ok(keys
        .iter()
        .map(|k| compute(&k.course, facts.get(k).unwrap_or(&empty), catalog.get(&(k.tenant.clone(), k.course.clone()))))
        .collect())
}

/// Takes the course locks of `keys` (shared for learner batches, exclusive for catalog changes).
pub async fn lock_courses<'a>(
    tx: &mut lms_state::Tx,
    backend: Backend,
    courses: impl Iterator<Item = (&'a str, &'a str)>,
    exclusive: bool,
) -> Result<(), StoreError> {
    let keys: Vec<i64> = courses.map(|(t, c)| course_lock(t, c)).collect();
    lms_state::sql::lock_keys(tx, backend, &keys, exclusive).await
}
