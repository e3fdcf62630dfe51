//! The course catalog: `course.published` / `course.retired` from the compacted catalog
//! topic into the catalog tables, highest version winning whatever the arrival order.
//!
//! The topic's keys (`Event::partition_key`) give every tenant, course, version and content
//! a key of its own, and a retirement another, so compaction only removes duplicates; the
//! versions of one course may therefore come from different partitions, in any order. Every
//! effect here is order-insensitive: the highest version wins (equal versions by content),
//! the earliest retirement is kept in `catalog_retirements` whether or not its course has
//! arrived, and a record seen twice changes nothing.
//!
//! When a course's current version changes, every learner with progress in it is
//! recomputed in the same transaction (a course may arrive after its lesson events), and
//! the resulting `progress.updated` and first `course.completed` events go to the outbox.
//! The course lock is taken exclusively, so a progress batch of the same course commits
//! either before (and is recomputed here) or after (and sees the new catalog).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use lms_bus::Record;
use lms_events::{EventData, TraceContext};
use lms_state::sql::{to_us, values};
use lms_state::{Backend, Store, StoreError, Tx};
use sqlx::Row as _;

use super::{SOURCE, db};
use crate::stateful::{Applied, Emitted, Stage, StageError};

/// The catalog processor's effects; run it as `Stateful::new(store, relay, Catalog)`.
pub struct Catalog;

/// The winning publication of one course in a batch.
struct Publication {
    version: i64,
    title: String,
    lessons: String,
    at_us: i64,
}

impl Publication {
    /// Highest version wins; equal versions are ordered by content so that the result
    /// never depends on arrival order.
    fn beats(&self, other: &Publication) -> bool {
        (self.version, &self.lessons, &self.title) > (other.version, &other.lessons, &other.title)
    }
}

async fn apply(store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Emitted, StoreError> {
    let mut published: BTreeMap<(String, String), Publication> = BTreeMap::new();
    let mut retired: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut traces: HashMap<(String, String), TraceContext> = HashMap::new();
    for r in records {
        let e = &r.event;
        match &e.data {
            EventData::CoursePublished(d) => {
                let mut lessons: Vec<&str> = Vec::new();
                for l in d.modules.iter().flat_map(|m| &m.lessons) {
                    if !lessons.contains(&l.as_str()) {
                        lessons.push(l);
                    }
                }
                let p = Publication {
                    version: i64::from(d.version),
                    title: d.title.clone(),
                    lessons: serde_json::to_string(&lessons).unwrap_or_else(|_| "[]".to_owned()),
                    at_us: to_us(e.time),
                };
                let key = (e.tenant.clone(), d.course_id.clone());
                if published.get(&key).is_none_or(|q| p.beats(q)) {
                    published.insert(key.clone(), p);
                }
                if let Some(t) = &r.trace {
                    traces.insert(key, t.clone());
                }
            }
            EventData::CourseRetired(d) => {
                let at = to_us(e.time);
                let v = retired.entry((e.tenant.clone(), d.course_id.clone())).or_insert(at);
                *v = (*v).min(at);
            }
            _ => {}
        }
    }
    let courses = published.keys().chain(retired.keys());
    db::lock_courses(tx, store.backend(), courses.map(|(t, c)| (t.as_str(), c.as_str())), true).await?;

    let mut changed: Vec<(String, String)> = Vec::new();
    // Equal versions are ordered by content byte by byte, as `Publication::beats` orders
    // them: a PostgreSQL database's default collation (en_US.UTF-8, say) would order
    // punctuation differently, and the winner would then depend on the arrival order.
    let bytes = match store.backend() {
        Backend::Postgres => " COLLATE \"C\"",
        Backend::Sqlite => "",
    };
    let rows: Vec<_> = published.iter().collect();
    for chunk in rows.chunks(lms_state::sql::CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO catalog_courses AS c (tenant, course_id, version, title, lessons, published_at_us) VALUES {} \
             ON CONFLICT (tenant, course_id) DO UPDATE SET version = excluded.version, title = excluded.title, \
             lessons = excluded.lessons, published_at_us = excluded.published_at_us \
             WHERE excluded.version > c.version OR (excluded.version = c.version AND (excluded.lessons{bytes} > c.lessons \
             OR (excluded.lessons = c.lessons AND excluded.title{bytes} > c.title))) \
             RETURNING tenant, course_id",
            values(chunk.len(), 6, 1)
        );
        let mut q = sqlx::query(&sql);
        for ((tenant, course), p) in chunk {
            q = q.bind(tenant.as_str()).bind(course.as_str()).bind(p.version).bind(p.title.as_str()).bind(p.lessons.as_str()).bind(p.at_us);
        }
        for row in q.fetch_all(&mut **tx).await? {
            changed.push((row.try_get(0)?, row.try_get(1)?));
        }
    }
    // Retirement keeps progress as it is (CONTRACT: a dropped or retired course keeps its
    // figures); it is recorded for readers, the earliest time winning. It has a row of its
    // own: a retirement may arrive before its course (another partition of the catalog
    // topic), and must not be lost then.
    let rows: Vec<_> = retired.iter().collect();
    for chunk in rows.chunks(lms_state::sql::CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO catalog_retirements AS r (tenant, course_id, retired_at_us) VALUES {} \
             ON CONFLICT (tenant, course_id) DO UPDATE SET retired_at_us = excluded.retired_at_us \
             WHERE excluded.retired_at_us < r.retired_at_us",
            values(chunk.len(), 3, 1)
        );
        let mut q = sqlx::query(&sql);
        for ((tenant, course), at) in chunk {
            q = q.bind(tenant.as_str()).bind(course.as_str()).bind(**at);
        }
        q.execute(&mut **tx).await?;
    }

    let mut out = Vec::new();
    for (tenant, course) in changed {
        let keys = db::learners_of(tx, &tenant, &course).await?;
        if keys.is_empty() {
            continue;
        }
        let trace = traces.get(&(tenant.clone(), course.clone())).map(TraceContext::child);
        let now = chrono::Utc::now();
        let revised = db::revise(tx, &keys, now.timestamp_micros()).await?;
        let events = db::recompute(tx, &keys, &revised, &HashMap::new(), now, SOURCE).await?;
        out.extend(events.into_iter().map(|e| (e, trace.clone())));
    }
    Ok(out)
}

#[async_trait]
impl Stage for Catalog {
    fn name(&self) -> &'static str {
        "catalog"
    }

    async fn apply(&self, store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Applied, StageError> {
        Ok(apply(store, tx, records).await?.into())
    }
}
