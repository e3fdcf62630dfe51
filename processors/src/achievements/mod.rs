//! Achievements: learning, enrollment and `progress.updated` events in; per-learner facts
//! in the store; rules ([`rules`]) evaluated for every learner a batch touches; each
//! achievement unlocked at most once (per course where the rule is per course), listed
//! by `GET /v1/learners/{id}/achievements` and announced with `achievement.unlocked`.
//!
//! The time of a course completion is taken from `progress.updated` (the latest one that
//! says completed), not from `course.completed`, which is emitted once and so keeps the
//! completion time known at that moment.
//!
//! One learner's events arrive on three topics whose partitions may be owned by
//! different members, so a batch locks its learners exclusively (PostgreSQL advisory
//! locks) before reading their facts: evaluation always sees every committed fact.

#[cfg(test)]
mod properties;
pub mod rules;
pub mod state;

/// The achievements' configuration: where the rules come from (`lms processor run --rules`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AchievementsConfig {
    /// The rules file; `None`: the rules shipped in `config/achievements.yaml`.
    pub rules: Option<std::path::PathBuf>,
}

/// Loads the rules of the [`AchievementsConfig`] (the shipped ones without it), unless the
/// process already holds rules.
pub async fn prepare(ctx: &mut crate::Context) -> Result<Vec<crate::Check>, String> {
    if ctx.extensions.get::<Arc<Rules>>().is_none() {
        let path = ctx.extensions.get::<AchievementsConfig>().and_then(|c| c.rules.clone());
        let loaded = Rules::load(path.as_deref()).map_err(|e| e.to_string())?;
        ctx.extensions.insert(Arc::new(loaded));
    }
    Ok(Vec::new())
}

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lms_bus::Record;
use lms_events::data::{AchievementUnlocked, ProgressStatus};
use lms_events::{Event, EventData, TraceContext};
use lms_state::sql::{CHUNK_ROWS, from_us, lock_key, lock_keys, to_us, values};
use lms_state::{Store, StoreError, Tx};
use serde::Serialize;
use sqlx::{AnyConnection, Row as _};

use self::rules::{LearnerFacts, Rules};
use crate::derived_id;
use crate::stateful::{Applied, Emitted, Stage, StageError};

/// The `source` of the events this processor emits.
pub const SOURCE: &str = "lms-achievements";

/// 15 minutes in µs: activity is kept per slot of this size (see the migration).
const SLOT_US: i64 = 15 * 60 * 1_000_000;

/// The achievements processor's effects; run it as `Stateful::new(store, relay, Achievements::new(rules))`.
pub struct Achievements {
    rules: Arc<Rules>,
}

impl Achievements {
    /// With these rules.
    pub fn new(rules: Arc<Rules>) -> Self {
        Self { rules }
    }
}

type LearnerKey = (String, String);

#[derive(Default)]
struct Changes {
    /// (tenant, learner, kind, course) → earliest time µs.
    facts: BTreeMap<(String, String, &'static str, String), i64>,
    /// (tenant, learner, course) → completion time µs of the latest `progress.updated`
    /// saying completed: the progress processor refines `completed_at` as late events
    /// arrive, and its updates of one learner arrive in order (one key, one partition).
    completions: BTreeMap<(String, String, String), i64>,
    /// (tenant, learner, slot) → earliest time µs.
    activity: BTreeMap<(String, String, i64), i64>,
    /// (tenant, learner, course, time µs) of every enrolment.
    enrollments: BTreeSet<(String, String, String, i64)>,
    traces: HashMap<LearnerKey, TraceContext>,
}

impl Changes {
    fn fact(&mut self, e: &Event, learner: &str, kind: &'static str, course: &str, at: DateTime<Utc>) {
        let at = to_us(at);
        let v = self.facts.entry((e.tenant.clone(), learner.to_owned(), kind, course.to_owned())).or_insert(at);
        *v = (*v).min(at);
    }

    fn add(&mut self, r: &Record) {
        let e = &r.event;
        if e.event_type().is_learning_activity()
            && let Some(learner) = e.learner_id()
        {
            let at = to_us(e.time);
            let v = self.activity.entry((e.tenant.clone(), learner.to_owned(), at.div_euclid(SLOT_US) * SLOT_US)).or_insert(at);
            *v = (*v).min(at);
        }
        match &e.data {
            EventData::LessonCompleted(d) => self.fact(e, &d.learner_id, "lesson_completed", &d.course_id, e.time),
            EventData::ProgressUpdated(d) => {
                if let (ProgressStatus::Completed, Some(at)) = (d.status, d.completed_at) {
                    self.completions.insert((e.tenant.clone(), d.learner_id.clone(), d.course_id.clone()), to_us(at));
                }
            }
            EventData::EnrollmentCreated(d) => {
                self.enrollments.insert((e.tenant.clone(), d.learner_id.clone(), d.course_id.clone(), to_us(e.time)));
            }
            EventData::AssessmentGraded(d) if d.score >= d.max_score => {
                self.fact(e, &d.learner_id, "perfect_score", &d.course_id, e.time);
            }
            _ => {}
        }
        if let (Some(learner), Some(trace)) = (e.learner_id(), &r.trace) {
            self.traces.insert((e.tenant.clone(), learner.to_owned()), trace.clone());
        }
    }

    fn learners(&self) -> BTreeSet<LearnerKey> {
        let facts = self.facts.keys().map(|(t, l, _, _)| (t.clone(), l.clone()));
        let completions = self.completions.keys().map(|(t, l, _)| (t.clone(), l.clone()));
        let activity = self.activity.keys().map(|(t, l, _)| (t.clone(), l.clone()));
        let enrollments = self.enrollments.iter().map(|(t, l, _, _)| (t.clone(), l.clone()));
        facts.chain(completions).chain(activity).chain(enrollments).collect()
    }
}

const MIN_AT: &str = "CASE WHEN excluded.{col} < {table}.{col} THEN excluded.{col} ELSE {table}.{col} END";

fn min_update(table: &str, col: &str) -> String {
    MIN_AT.replace("{col}", col).replace("{table}", table)
}

async fn write_facts(conn: &mut AnyConnection, changes: &Changes) -> Result<(), StoreError> {
    let facts: Vec<_> = changes.facts.iter().collect();
    for chunk in facts.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO achievement_facts (tenant, learner_id, kind, course_id, at_us) VALUES {} \
             ON CONFLICT (tenant, learner_id, kind, course_id) DO UPDATE SET at_us = {}",
            values(chunk.len(), 5, 1),
            min_update("achievement_facts", "at_us")
        );
        let mut q = sqlx::query(&sql);
        for ((t, l, kind, c), at) in chunk {
            q = q.bind(t.as_str()).bind(l.as_str()).bind(*kind).bind(c.as_str()).bind(**at);
        }
        q.execute(&mut *conn).await?;
    }
    let completions: Vec<_> = changes.completions.iter().collect();
    for chunk in completions.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO achievement_facts (tenant, learner_id, kind, course_id, at_us) VALUES {} \
             ON CONFLICT (tenant, learner_id, kind, course_id) DO UPDATE SET at_us = excluded.at_us",
            values(chunk.len(), 5, 1)
        );
        let mut q = sqlx::query(&sql);
        for ((t, l, c), at) in chunk {
            q = q.bind(t.as_str()).bind(l.as_str()).bind("course_completed").bind(c.as_str()).bind(**at);
        }
        q.execute(&mut *conn).await?;
    }
    let activity: Vec<_> = changes.activity.iter().collect();
    for chunk in activity.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO achievement_activity (tenant, learner_id, slot_us, first_at_us) VALUES {} \
             ON CONFLICT (tenant, learner_id, slot_us) DO UPDATE SET first_at_us = {}",
            values(chunk.len(), 4, 1),
            min_update("achievement_activity", "first_at_us")
        );
        let mut q = sqlx::query(&sql);
        for ((t, l, slot), at) in chunk {
            q = q.bind(t.as_str()).bind(l.as_str()).bind(*slot).bind(**at);
        }
        q.execute(&mut *conn).await?;
    }
    let enrollments: Vec<_> = changes.enrollments.iter().collect();
    for chunk in enrollments.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO achievement_enrollments (tenant, learner_id, course_id, at_us) VALUES {} ON CONFLICT DO NOTHING",
            values(chunk.len(), 4, 1)
        );
        let mut q = sqlx::query(&sql);
        for (t, l, c, at) in chunk {
            q = q.bind(t.as_str()).bind(l.as_str()).bind(c.as_str()).bind(*at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn load_facts(conn: &mut AnyConnection, learners: &[LearnerKey]) -> Result<HashMap<LearnerKey, LearnerFacts>, StoreError> {
    let mut out: HashMap<LearnerKey, LearnerFacts> = HashMap::new();
    for chunk in learners.chunks(CHUNK_ROWS) {
        let in_list = values(chunk.len(), 2, 1);
        let queries = [
            format!(
                "SELECT tenant, learner_id, kind, course_id, at_us FROM achievement_facts WHERE (tenant, learner_id) IN (VALUES {in_list})"
            ),
            format!(
                "SELECT tenant, learner_id, slot_us, first_at_us FROM achievement_activity WHERE (tenant, learner_id) IN (VALUES {in_list})"
            ),
            format!(
                "SELECT tenant, learner_id, timezone FROM learner_preferences WHERE timezone IS NOT NULL AND (tenant, learner_id) IN (VALUES {in_list})"
            ),
            format!(
                "SELECT tenant, learner_id, course_id, at_us FROM achievement_enrollments WHERE (tenant, learner_id) IN (VALUES {in_list})"
            ),
        ];
        for (i, sql) in queries.iter().enumerate() {
            let mut q = sqlx::query(sql);
            for (t, l) in chunk {
                q = q.bind(t.as_str()).bind(l.as_str());
            }
            for row in q.fetch_all(&mut *conn).await? {
                let f = out.entry((row.try_get(0)?, row.try_get(1)?)).or_default();
                match i {
                    0 => {
                        let kind: String = row.try_get(2)?;
                        let course: String = row.try_get(3)?;
                        let at = from_us(row.try_get(4)?)?;
                        let map = match kind.as_str() {
                            "lesson_completed" => &mut f.lesson_completed,
                            "course_completed" => &mut f.course_completed,
                            "perfect_score" => &mut f.perfect_score,
                            other => return Err(StoreError::Corrupt(format!("achievement fact kind {other:?}"))),
                        };
                        map.insert(course, at);
                    }
                    1 => {
                        f.activity.insert(row.try_get(2)?, from_us(row.try_get(3)?)?);
                    }
                    3 => {
                        f.enrolled.entry(row.try_get(2)?).or_default().insert(from_us(row.try_get(3)?)?);
                    }
                    _ => {
                        let tz: String = row.try_get(2)?;
                        // An unknown zone name falls back to UTC, as when none is set.
                        f.timezone = tz.parse().ok();
                    }
                }
            }
        }
    }
    Ok(out)
}

async fn apply(rules: &Rules, store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Emitted, StoreError> {
    let mut changes = Changes::default();
    for r in records {
        changes.add(r);
    }
    let learners: Vec<LearnerKey> = changes.learners().into_iter().collect();
    if learners.is_empty() {
        return Ok(Vec::new());
    }
    let locks: Vec<i64> = learners.iter().map(|(t, l)| lock_key("learner", &[t, l])).collect();
    lock_keys(tx, store.backend(), &locks, true).await?;
    write_facts(tx, &changes).await?;
    let facts = load_facts(tx, &learners).await?;

    let titles: HashMap<&str, &str> = rules.achievements.iter().map(|a| (a.id.as_str(), a.title.as_str())).collect();
    let mut unlocks: Vec<UnlockRow<'_>> = Vec::new();
    for learner in &learners {
        if let Some(f) = facts.get(learner) {
            for (id, course, at) in rules::evaluate(rules, f) {
                unlocks.push((learner, id, course, to_us(at)));
            }
        }
    }
    let mut out = Vec::new();
    for chunk in unlocks.chunks(CHUNK_ROWS) {
        let rows = values(chunk.len(), 6, 1);
        let insert = format!(
            "INSERT INTO achievements (tenant, learner_id, achievement_id, course_id, title, unlocked_at_us) VALUES {rows} \
             ON CONFLICT (tenant, learner_id, achievement_id, course_id) DO NOTHING \
             RETURNING tenant, learner_id, achievement_id, course_id"
        );
        let fresh: HashSet<(String, String, String, String)> = bind_unlocks(&insert, chunk, &titles)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        // Facts only converge (earliest times, the latest completion time), so the unlock
        // time is the evaluation of the current facts: the last batch of a learner sets
        // the time that processing every event in time order gives.
        let current = format!(
            "INSERT INTO achievements (tenant, learner_id, achievement_id, course_id, title, unlocked_at_us) VALUES {rows} \
             ON CONFLICT (tenant, learner_id, achievement_id, course_id) DO UPDATE SET unlocked_at_us = excluded.unlocked_at_us, title = excluded.title"
        );
        bind_unlocks(&current, chunk, &titles).execute(&mut **tx).await?;
        for ((t, l), id, course, at) in chunk {
            if !fresh.contains(&(t.clone(), l.clone(), id.clone(), course.clone())) {
                continue;
            }
            let unlocked_at = from_us(*at)?;
            let data = AchievementUnlocked {
                learner_id: l.clone(),
                achievement_id: id.clone(),
                title: titles.get(id.as_str()).map_or_else(|| id.clone(), |s| (*s).to_owned()),
                course_id: (!course.is_empty()).then(|| course.clone()),
                unlocked_at,
            };
            let event = Event::derived(t, SOURCE, unlocked_at, EventData::AchievementUnlocked(data))
                .with_id(derived_id("achievement.unlocked", &[t, l, id, course]));
            let trace = changes.traces.get(&(t.clone(), l.clone())).map(TraceContext::child);
            out.push((event, trace));
        }
    }
    Ok(out)
}

type UnlockRow<'a> = (&'a LearnerKey, String, String, i64);

fn bind_unlocks<'q>(
    sql: &'q str,
    rows: &'q [UnlockRow<'_>],
    titles: &HashMap<&str, &'q str>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(sql);
    for ((t, l), id, course, at) in rows {
        let title = titles.get(id.as_str()).copied().unwrap_or(id.as_str());
        q = q.bind(t.clone()).bind(l.clone()).bind(id.clone()).bind(course.clone()).bind(title).bind(*at);
    }
    q
}

#[async_trait]
impl Stage for Achievements {
    fn name(&self) -> &'static str {
        "achievements"
    }

    async fn apply(&self, store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Applied, StageError> {
        Ok(apply(&self.rules, store, tx, records).await?.into())
    }
}

/// One entry of `GET /v1/learners/{id}/achievements`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = LearnerAchievement))]
pub struct AchievementView {
    /// Achievement id.
    pub achievement_id: String,
    /// Title.
    pub title: String,
    /// When it was earned (event time).
    pub unlocked_at: DateTime<Utc>,
    /// The course, for per-course achievements.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub course_id: Option<String>,
}

/// `GET /v1/learners/{learner_id}/achievements`, in unlock order.
pub async fn read(store: &Store, tenant: &str, learner: &str) -> Result<Vec<AchievementView>, StoreError> {
    let rows = sqlx::query(
        "SELECT achievement_id, title, unlocked_at_us, course_id FROM achievements \
         WHERE tenant = $1 AND learner_id = $2 ORDER BY unlocked_at_us, achievement_id, course_id",
    )
    .bind(tenant)
    .bind(learner)
    .fetch_all(store.pool())
    .await?;
    rows.into_iter()
        .map(|r| {
            let course: String = r.try_get(3)?;
            Ok(AchievementView {
                achievement_id: r.try_get(0)?,
                title: r.try_get(1)?,
                unlocked_at: from_us(r.try_get(2)?)?,
                course_id: (!course.is_empty()).then_some(course),
            })
        })
        .collect()
}
