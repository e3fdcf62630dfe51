//! The notifications processor's decisions (see the module documentation of
//! [`super`]): the `Stage`, its settings and the rows it writes for the dispatcher. Built
//! with the `delivery` feature, with the dispatcher and the templates.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Days, TimeZone as _, Utc};
use lms_bus::Record;
use lms_events::data::ProgressStatus;
use lms_events::{EventData, TraceContext};
use lms_state::sql::{CHUNK_ROWS, lock_key, lock_keys, to_us, values};

/// Rows per statement of the wide inserts of a batch (up to 12 columns: 24 000 bind
/// parameters, below both databases' limits): fewer round trips than `CHUNK_ROWS`.
const WIDE_CHUNK_ROWS: usize = 2000;
use lms_state::{Store, StoreError, Tx};

use crate::stateful::{Applied, Stage, StageError, Stateful};
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::sync::Notify;

use super::metrics::NotifyMetrics;
use super::preferences::{Digest, Preferences};
use super::templates::{TemplateError, Templates};
use crate::derived_id;

use super::config::{Clock, NotifyConfig};
use super::{MILESTONES, TRANSACTIONAL, dispatcher, preferences, templates};

/// What the processor and the dispatcher share: configuration, templates, the clock, and
/// the waker of the dispatcher.
#[derive(Debug)]
pub struct Settings {
    /// The `notifications` configuration.
    pub config: NotifyConfig,
    /// The templates.
    pub templates: Templates,
    /// The time decisions are made by.
    pub clock: Clock,
    /// Woken after commits that planned deliveries.
    pub dispatcher: Arc<Notify>,
    /// Metrics of the processor and the dispatcher.
    pub metrics: Arc<NotifyMetrics>,
}

/// Loads the templates of the `notifications` section ([`NotifyConfig`], its defaults
/// without it) into [`Settings`] with metrics in the process's registry, unless the process
/// already holds settings; the SMTP server is a readiness check when e-mail is on.
pub async fn prepare(ctx: &mut crate::Context) -> Result<Vec<crate::Check>, String> {
    if ctx.extensions.get::<Arc<Settings>>().is_none() {
        let config = ctx.extensions.get::<NotifyConfig>().cloned().unwrap_or_default();
        let settings = Settings::load(config).map_err(|e| format!("cannot load the notification templates: {e}"))?;
        let metrics = NotifyMetrics::register(prometheus::default_registry()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "notification metrics already registered; these are not exported");
            NotifyMetrics::standalone()
        });
        ctx.extensions.insert(Arc::new(settings.with_metrics(metrics)));
    }
    let smtp = ctx.require::<Arc<Settings>>("notifications")?.config.smtp.clone();
    if !smtp.enabled {
        return Ok(Vec::new());
    }
    Ok(vec![crate::Check {
        name: "smtp",
        probe: Box::new(move || {
            let smtp = smtp.clone();
            Box::pin(async move { dispatcher::smtp_ready(&smtp, std::time::Duration::from_millis(1900)).await })
        }),
    }])
}

impl Settings {
    /// Settings of `config` with `templates`.
    pub fn new(config: NotifyConfig, templates: Templates) -> Settings {
        Settings { config, templates, clock: Clock::default(), dispatcher: Arc::new(Notify::new()), metrics: NotifyMetrics::standalone() }
    }

    /// Settings of `config`, with the templates of its `templates_dir`.
    pub fn load(config: NotifyConfig) -> Result<Settings, templates::LoadError> {
        let templates = Templates::load(config.templates_dir.as_deref())?;
        Ok(Settings::new(config, templates))
    }

    /// With this clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Settings {
        self.clock = clock;
        self
    }

    /// With these metrics (the ones registered in the registry the process exports).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<NotifyMetrics>) -> Settings {
        self.metrics = metrics;
        self
    }

    pub(crate) fn window_us(&self) -> i64 {
        i64::try_from(self.config.window_s.max(1)).unwrap_or(3600) * 1_000_000
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new(NotifyConfig::default(), Templates::from_sets([]))
    }
}

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An event's notification could not be rendered (dead-lettered with this reason).
    #[error("event {event_id}: {source}")]
    Template {
        /// The event.
        event_id: String,
        /// Why.
        #[source]
        source: TemplateError,
    },
}

impl From<sqlx::Error> for NotifyError {
    fn from(e: sqlx::Error) -> Self {
        NotifyError::Store(e.into())
    }
}

/// The notifications stage: decisions in the batch's transaction, which [`Stateful`] owns
/// as for every processor; after the commit it counts them and wakes the dispatcher.
pub struct Notifications {
    settings: Arc<Settings>,
}

/// The notifications processor on `store` with `settings`: run it as a member of its
/// consumer group (`lms-notifications`).
pub fn processor(store: Store, settings: Arc<Settings>) -> Stateful<Notifications> {
    // Decisions emit no derived events (the dispatcher does), so no relay needs waking.
    Stateful::new(store, Arc::new(Notify::new()), Notifications { settings })
}

#[async_trait]
impl Stage for Notifications {
    fn name(&self) -> &'static str {
        "notifications"
    }

    async fn apply(&self, store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Applied, StageError> {
        let decided = apply(&self.settings, store, tx, records).await.map_err(|e| match e {
            NotifyError::Store(e) => StageError::Store(e),
            NotifyError::Template { event_id, source } => StageError::Reject { event_id, reason: source.to_string() },
        })?;
        let settings = Arc::clone(&self.settings);
        let after_commit = move || {
            decided.count(&settings.metrics);
            if decided.deliveries > 0 {
                settings.dispatcher.notify_one();
            }
        };
        Ok(Applied { emitted: Vec::new(), after_commit: Some(Box::new(after_commit)) })
    }
}

/// A notification to decide.
struct Candidate {
    tenant: String,
    /// The notification's id ([`notification_id`] of tenant, learner and source key).
    id: String,
    learner: String,
    category: &'static str,
    kind: &'static str,
    source_key: String,
    source_event_id: String,
    vars: Value,
    superseded: bool,
    event_at_us: i64,
    trace: Option<TraceContext>,
}

/// `amount_minor` as a decimal with two places (the templates' `amount`).
fn amount(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", (minor / 100).abs(), (minor % 100).abs())
}

async fn payment_learners(tx: &mut Tx, records: &[Record]) -> Result<HashMap<(String, String), String>, StoreError> {
    let mut known: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for r in records {
        let e = &r.event;
        match &e.data {
            EventData::PaymentSucceeded(d) => {
                known.entry((e.tenant.clone(), d.payment_id.clone())).or_insert_with(|| d.learner_id.clone());
            }
            EventData::PaymentFailed(d) => {
                known.entry((e.tenant.clone(), d.payment_id.clone())).or_insert_with(|| d.learner_id.clone());
            }
            EventData::PaymentRefunded(d) => {
                wanted.insert((e.tenant.clone(), d.payment_id.clone()));
            }
            _ => {}
        }
    }
    let rows: Vec<_> = known.iter().collect();
    for chunk in rows.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO notification_payments (tenant, payment_id, learner_id) VALUES {} ON CONFLICT (tenant, payment_id) DO NOTHING",
            values(chunk.len(), 3, 1)
        );
        let mut q = sqlx::query(&sql);
        for ((t, p), l) in chunk {
            q = q.bind(t.as_str()).bind(p.as_str()).bind(l.as_str());
        }
        q.execute(&mut **tx).await?;
    }
    let mut out: HashMap<(String, String), String> = HashMap::new();
    let wanted: Vec<_> = wanted.into_iter().collect();
    for chunk in wanted.chunks(CHUNK_ROWS) {
        let sql = format!(
            "SELECT tenant, payment_id, learner_id FROM notification_payments WHERE (tenant, payment_id) IN (VALUES {})",
            values(chunk.len(), 2, 1)
        );
        let mut q = sqlx::query(&sql);
        for (t, p) in chunk {
            q = q.bind(t.as_str()).bind(p.as_str());
        }
        for row in q.fetch_all(&mut **tx).await? {
            out.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
        }
    }
    Ok(out)
}

fn candidates(records: &[Record], payments: &HashMap<(String, String), String>) -> Vec<Candidate> {
    let mut out = Vec::new();
    for r in records {
        let e = &r.event;
        let mut push = |learner: &str, category: &'static str, kind: &'static str, source_key: String, vars: Value, superseded: bool| {
            out.push(Candidate {
                tenant: e.tenant.clone(),
                id: notification_id(&e.tenant, learner, &source_key),
                learner: learner.to_owned(),
                category,
                kind,
                source_key,
                source_event_id: e.id.clone(),
                vars,
                superseded,
                event_at_us: to_us(e.time),
                trace: r.trace.clone(),
            });
        };
        match &e.data {
            EventData::EnrollmentCreated(d) => push(
                &d.learner_id,
                "enrollment",
                "enrollment_created",
                e.id.clone(),
                json!({"course_id": d.course_id, "source": d.source.as_str()}),
                false,
            ),
            EventData::PaymentSucceeded(d) => push(
                &d.learner_id,
                TRANSACTIONAL,
                "payment_succeeded",
                e.id.clone(),
                json!({"payment_id": d.payment_id, "amount": amount(d.amount_minor), "currency": d.currency, "course_id": d.course_id}),
                false,
            ),
            EventData::PaymentFailed(d) => push(
                &d.learner_id,
                TRANSACTIONAL,
                "payment_failed",
                e.id.clone(),
                json!({"payment_id": d.payment_id, "reason": d.reason}),
                false,
            ),
            EventData::PaymentRefunded(d) => match payments.get(&(e.tenant.clone(), d.payment_id.clone())) {
                Some(learner) => push(
                    learner,
                    TRANSACTIONAL,
                    "payment_refunded",
                    e.id.clone(),
                    json!({"payment_id": d.payment_id, "amount": amount(d.amount_minor), "currency": d.currency}),
                    false,
                ),
                None => tracing::warn!(event_id = %e.id, payment_id = %d.payment_id, "refund of an unknown payment: nobody to notify"),
            },
            EventData::CourseCompleted(d) => push(
                &d.learner_id,
                "completion",
                "course_completed",
                e.id.clone(),
                json!({"course_id": d.course_id, "completed_at": d.completed_at.to_rfc3339()}),
                false,
            ),
            EventData::AchievementUnlocked(d) => push(
                &d.learner_id,
                "achievement",
                "achievement_unlocked",
                e.id.clone(),
                json!({"title": d.title, "achievement_id": d.achievement_id, "course_id": d.course_id}),
                false,
            ),
            EventData::ProgressUpdated(d) => {
                let reached: Vec<u32> = MILESTONES.iter().copied().filter(|m| d.percent_complete >= f64::from(*m)).collect();
                let completed = d.status == ProgressStatus::Completed;
                for (i, m) in reached.iter().enumerate() {
                    let superseded = completed || i + 1 < reached.len();
                    push(
                        &d.learner_id,
                        "milestone",
                        "progress_milestone",
                        format!("milestone:{}:{m}", d.course_id),
                        json!({"course_id": d.course_id, "milestone": m, "percent_complete": d.percent_complete}),
                        superseded,
                    );
                }
            }
            _ => {}
        }
    }
    out
}

/// Where an item goes.
enum Decision {
    Direct,
    Muted,
    Superseded,
    Digest { key: String, due_us: i64 },
}

/// The digest window of `now` for a learner who chose `digest`: (key, due µs).
fn digest_window(settings: &Settings, prefs: &Preferences, now: DateTime<Utc>) -> Option<(String, i64)> {
    let now_us = to_us(now);
    match prefs.digest {
        Digest::Off => None,
        Digest::Hourly => {
            let w = settings.window_us();
            let start = now_us.div_euclid(w) * w;
            Some((format!("hourly:{start}"), start + w))
        }
        Digest::Daily if settings.config.daily_window_s == 86_400 => {
            let tz = prefs.tz();
            let local = now.with_timezone(&tz).date_naive();
            let midnight = |d: chrono::NaiveDate| {
                let t = d.and_hms_opt(0, 0, 0).unwrap_or_default();
                tz.from_local_datetime(&t)
                    .earliest()
                    .or_else(|| tz.from_local_datetime(&(t + chrono::Duration::hours(1))).earliest())
                    .map(|t| to_us(t.with_timezone(&Utc)))
            };
            let start = midnight(local).unwrap_or(now_us);
            let end = midnight(local + Days::new(1)).unwrap_or(now_us + 86_400_000_000);
            Some((format!("daily:{start}"), end))
        }
        Digest::Daily => {
            let w = i64::try_from(settings.config.daily_window_s.max(1)).unwrap_or(86_400) * 1_000_000;
            let start = now_us.div_euclid(w) * w;
            Some((format!("daily:{start}"), start + w))
        }
    }
}

/// A notification row.
pub(crate) struct NotificationRow {
    pub(crate) tenant: String,
    pub(crate) id: String,
    pub(crate) learner: String,
    pub(crate) category: &'static str,
    pub(crate) source_key: String,
    pub(crate) source_event_id: String,
    pub(crate) title: String,
    pub(crate) body: String,
    pub(crate) state: &'static str,
    pub(crate) digest_key: Option<String>,
    pub(crate) event_at_us: i64,
}

/// A delivery intent.
pub(crate) struct DeliveryRow<'a> {
    tenant: &'a str,
    notification_id: &'a str,
    channel: &'static str,
    learner: &'a str,
    category: &'a str,
    source_event_id: &'a str,
    target: Option<&'a str>,
    due_us: i64,
}

/// The delivery intents of a notification for a learner with `prefs`.
#[allow(clippy::too_many_arguments)] // One notification's identity, each a plain string.
pub(crate) fn deliveries_for<'a>(
    settings: &Settings,
    prefs: &'a Preferences,
    tenant: &'a str,
    learner: &'a str,
    notification_id: &'a str,
    category: &'a str,
    source_event_id: &'a str,
    now: DateTime<Utc>,
) -> Vec<DeliveryRow<'a>> {
    let due_us = to_us(prefs.deliver_at(now));
    let mut out = Vec::with_capacity(3);
    let mut add =
        |channel, target| out.push(DeliveryRow { tenant, notification_id, channel, learner, category, source_event_id, target, due_us });
    if prefs.channels.in_app {
        add("in_app", None);
    }
    if let (true, true, Some(email)) = (settings.config.smtp.enabled, prefs.channels.email, prefs.email.as_deref()) {
        add("email", Some(email));
    }
    if prefs.channels.webhook && settings.config.webhooks.contains_key(tenant) {
        add("webhook", None);
    }
    out
}

/// Writes delivery intents (existing ones are kept).
pub(crate) async fn insert_deliveries(tx: &mut Tx, rows: &[DeliveryRow<'_>], now_us: i64) -> Result<(), StoreError> {
    for chunk in rows.chunks(WIDE_CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO notification_deliveries (tenant, notification_id, channel, learner_id, category, source_event_id, target, \
             state, due_at_us, attempts, updated_at_us) VALUES {} ON CONFLICT (tenant, notification_id, channel) DO NOTHING",
            values(chunk.len(), 11, 1)
        );
        let mut q = sqlx::query(&sql);
        for d in chunk {
            q = q
                .bind(d.tenant)
                .bind(d.notification_id)
                .bind(d.channel)
                .bind(d.learner)
                .bind(d.category)
                .bind(d.source_event_id)
                .bind(d.target)
                .bind("pending")
                .bind(d.due_us)
                .bind(0_i64)
                .bind(now_us);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Writes notifications; a notification that exists already (its source was decided
/// before: a redelivery, a replay) is kept as it is. Answers the (tenant, id) written.
pub(crate) async fn insert_notifications(
    tx: &mut Tx,
    rows: &[NotificationRow],
    now_us: i64,
) -> Result<HashSet<(String, String)>, StoreError> {
    let mut inserted = HashSet::with_capacity(rows.len());
    for chunk in rows.chunks(WIDE_CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO notifications (tenant, id, learner_id, category, source_key, source_event_id, title, body, state, digest_key, \
             event_at_us, created_at_us) VALUES {} ON CONFLICT DO NOTHING RETURNING tenant, id",
            values(chunk.len(), 12, 1)
        );
        let mut q = sqlx::query(&sql);
        for n in chunk {
            q = q
                .bind(n.tenant.as_str())
                .bind(n.id.as_str())
                .bind(n.learner.as_str())
                .bind(n.category)
                .bind(n.source_key.as_str())
                .bind(n.source_event_id.as_str())
                .bind(n.title.as_str())
                .bind(n.body.as_str())
                .bind(n.state)
                .bind(n.digest_key.as_deref())
                .bind(n.event_at_us)
                .bind(now_us);
        }
        for row in q.fetch_all(&mut **tx).await? {
            inserted.insert((row.try_get(0)?, row.try_get(1)?));
        }
    }
    Ok(inserted)
}

/// Takes back notifications this transaction wrote (see [`apply`]).
async fn delete_notifications(tx: &mut Tx, keys: &HashSet<(String, String)>) -> Result<(), StoreError> {
    let keys: Vec<&(String, String)> = keys.iter().collect();
    for chunk in keys.chunks(WIDE_CHUNK_ROWS) {
        let sql = format!("DELETE FROM notifications WHERE (tenant, id) IN (VALUES {})", values(chunk.len(), 2, 1));
        let mut q = sqlx::query(&sql);
        for (t, id) in chunk {
            q = q.bind(t.as_str()).bind(id.as_str());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

type LearnerKey = (String, String);

async fn load_counters(
    tx: &mut Tx,
    learners: &[LearnerKey],
    window_start: i64,
) -> Result<HashMap<(String, String, String), i64>, StoreError> {
    let mut out = HashMap::new();
    for chunk in learners.chunks(WIDE_CHUNK_ROWS) {
        let sql = format!(
            "SELECT tenant, learner_id, category, sent FROM notification_counters WHERE window_start_us = $1 AND (tenant, learner_id) IN (VALUES {})",
            values(chunk.len(), 2, 2)
        );
        let mut q = sqlx::query(&sql).bind(window_start);
        for (t, l) in chunk {
            q = q.bind(t.as_str()).bind(l.as_str());
        }
        for row in q.fetch_all(&mut **tx).await? {
            out.insert((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?), row.try_get(3)?);
        }
    }
    Ok(out)
}

/// Opens (or finds) digest timers; answers the keys whose digest was already sent.
async fn open_digests(
    tx: &mut Tx,
    digests: &BTreeMap<(String, String, String), i64>,
) -> Result<HashSet<(String, String, String)>, StoreError> {
    let mut closed = HashSet::new();
    let rows: Vec<_> = digests.iter().collect();
    for chunk in rows.chunks(WIDE_CHUNK_ROWS) {
        // DO UPDATE (not NOTHING) locks the row: a dispatcher closing it right now is
        // waited for, and its `sent` is seen.
        let sql = format!(
            "INSERT INTO notification_digests (tenant, learner_id, digest_key, due_at_us, state) VALUES {} \
             ON CONFLICT (tenant, learner_id, digest_key) DO UPDATE SET due_at_us = notification_digests.due_at_us \
             RETURNING tenant, learner_id, digest_key, state",
            values(chunk.len(), 5, 1)
        );
        let mut q = sqlx::query(&sql);
        for ((t, l, k), due) in chunk {
            q = q.bind(t.as_str()).bind(l.as_str()).bind(k.as_str()).bind(**due).bind("open");
        }
        for row in q.fetch_all(&mut **tx).await? {
            let state: String = row.try_get(3)?;
            if state != "open" {
                closed.insert((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
            }
        }
    }
    Ok(closed)
}

/// The id of a notification.
pub fn notification_id(tenant: &str, learner: &str, source_key: &str) -> String {
    derived_id("notification", &[tenant, learner, source_key])
}

/// Template variables: the item's own plus the common ones.
fn with_common(mut vars: Value, tenant: &str, learner: &str, category: &str) -> Value {
    if let Value::Object(m) = &mut vars {
        m.insert("tenant".into(), json!(tenant));
        m.insert("learner_id".into(), json!(learner));
        m.insert("category".into(), json!(category));
    }
    vars
}

/// The notifications of candidates decided in memory: rows, their decisions, the digests
/// they open and the throttle counters they take.
struct Plan {
    rows: Vec<NotificationRow>,
    decisions: Vec<Decision>,
    digests: BTreeMap<(String, String, String), i64>,
    increments: BTreeMap<(String, String, String), i64>,
}

/// Renders and decides `items` as new notifications (see the module doc), against the
/// throttle counters `counters` of the window starting at `window_start`.
fn plan(
    settings: &Settings,
    items: &[Candidate],
    prefs: &HashMap<LearnerKey, Preferences>,
    counters: &HashMap<(String, String, String), i64>,
    now: DateTime<Utc>,
    window_start: i64,
) -> Result<Plan, NotifyError> {
    let defaults = Preferences::default();
    let window = settings.window_us();
    let limit = i64::from(settings.config.throttle_per_window);
    let mut counters = counters.clone();
    let mut out = Plan {
        rows: Vec::with_capacity(items.len()),
        decisions: Vec::with_capacity(items.len()),
        digests: BTreeMap::new(),
        increments: BTreeMap::new(),
    };
    for c in items {
        let p = prefs.get(&(c.tenant.clone(), c.learner.clone())).unwrap_or(&defaults);
        let vars = with_common(c.vars.clone(), &c.tenant, &c.learner, c.category);
        let rendered = settings
            .templates
            .render(&c.tenant, &p.locale, c.kind, &vars)
            .map_err(|source| NotifyError::Template { event_id: c.source_event_id.clone(), source })?;
        let decision = if c.superseded {
            Decision::Superseded
        } else if c.category == TRANSACTIONAL {
            Decision::Direct
        } else if p.mutes(c.category) {
            Decision::Muted
        } else if let Some((key, due_us)) = digest_window(settings, p, now) {
            Decision::Digest { key, due_us }
        } else {
            let key = (c.tenant.clone(), c.learner.clone(), c.category.to_owned());
            let sent = counters.entry(key.clone()).or_insert(0);
            if *sent < limit {
                *sent += 1;
                *out.increments.entry(key).or_insert(0) += 1;
                Decision::Direct
            } else {
                Decision::Digest { key: format!("throttle:{}:{window_start}", c.category), due_us: window_start + window }
            }
        };
        let (state, digest_key) = match &decision {
            Decision::Direct => ("direct", None),
            Decision::Muted => ("muted", None),
            Decision::Superseded => ("superseded", None),
            Decision::Digest { key, due_us } => {
                out.digests.insert((c.tenant.clone(), c.learner.clone(), key.clone()), *due_us);
                ("digest", Some(key.clone()))
            }
        };
        out.rows.push(NotificationRow {
            tenant: c.tenant.clone(),
            id: c.id.clone(),
            learner: c.learner.clone(),
            category: c.category,
            source_key: c.source_key.clone(),
            source_event_id: c.source_event_id.clone(),
            title: rendered.title,
            body: rendered.body,
            state,
            digest_key,
            event_at_us: c.event_at_us,
        });
        out.decisions.push(decision);
    }
    Ok(out)
}

/// Decides a batch; answers what it decided and planned.
///
/// Set-based: the learners' locks, preferences and throttle counters are one statement
/// each, and dedupe is the notifications' INSERT … ON CONFLICT DO NOTHING RETURNING: every
/// candidate is decided as new, and the rows the insert reports are the new ones. When a
/// candidate was decided before (a redelivery or a replay: rare), what was inserted is
/// taken back and the batch is decided again without the old candidates, so throttle
/// slots and digests go to new notifications only.
async fn apply(settings: &Settings, store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Decided, NotifyError> {
    let payments = payment_learners(tx, records).await?;
    let mut items = candidates(records, &payments);
    // Within the batch, the first occurrence wins.
    let mut seen = HashSet::with_capacity(items.len());
    items.retain(|c| seen.insert((c.tenant.clone(), c.id.clone())));
    if items.is_empty() {
        return Ok(Decided::default());
    }
    let learners: Vec<LearnerKey> =
        items.iter().map(|c| (c.tenant.clone(), c.learner.clone())).collect::<BTreeSet<_>>().into_iter().collect();
    let locks: Vec<i64> = learners.iter().map(|(t, l)| lock_key("learner", &[t, l])).collect();
    lock_keys(tx, store.backend(), &locks, true).await?;

    let prefs = preferences::load(tx, &learners).await?;
    let defaults = Preferences::default();
    let now = settings.clock.now();
    let now_us = to_us(now);
    let window = settings.window_us();
    let window_start = now_us.div_euclid(window) * window;
    let counters = load_counters(tx, &learners, window_start).await?;

    let Plan { rows, mut decisions, digests, increments } = loop {
        let plan = plan(settings, &items, &prefs, &counters, now, window_start)?;
        let inserted = insert_notifications(tx, &plan.rows, now_us).await?;
        if inserted.len() == plan.rows.len() {
            break plan;
        }
        delete_notifications(tx, &inserted).await?;
        items.retain(|c| inserted.contains(&(c.tenant.clone(), c.id.clone())));
        if items.is_empty() {
            return Ok(Decided::default());
        }
    };

    // A digest already sent (its window closed by a dispatcher with a clock ahead of
    // ours) cannot take items any more: they are delivered on their own.
    let closed = open_digests(tx, &digests).await?;
    if !closed.is_empty() {
        let mut direct: Vec<(&str, &str)> = Vec::new();
        for (row, decision) in rows.iter().zip(decisions.iter_mut()) {
            if let Decision::Digest { key, .. } = decision
                && closed.contains(&(row.tenant.clone(), row.learner.clone(), key.clone()))
            {
                *decision = Decision::Direct;
                direct.push((&row.tenant, &row.id));
            }
        }
        for chunk in direct.chunks(WIDE_CHUNK_ROWS) {
            let sql = format!(
                "UPDATE notifications SET state = 'direct', digest_key = NULL WHERE (tenant, id) IN (VALUES {})",
                values(chunk.len(), 2, 1)
            );
            let mut q = sqlx::query(&sql);
            for (t, id) in chunk {
                q = q.bind(*t).bind(*id);
            }
            q.execute(&mut **tx).await?;
        }
    }

    let mut deliveries = Vec::new();
    for (row, decision) in rows.iter().zip(&decisions) {
        if let Decision::Direct = decision {
            let p = prefs.get(&(row.tenant.clone(), row.learner.clone())).unwrap_or(&defaults);
            deliveries.extend(deliveries_for(settings, p, &row.tenant, &row.learner, &row.id, row.category, &row.source_event_id, now));
        }
    }
    insert_deliveries(tx, &deliveries, now_us).await?;

    let counts: Vec<_> = increments.iter().collect();
    for chunk in counts.chunks(WIDE_CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO notification_counters (tenant, learner_id, category, window_start_us, sent) VALUES {} \
             ON CONFLICT (tenant, learner_id, category, window_start_us) DO UPDATE SET sent = notification_counters.sent + excluded.sent",
            values(chunk.len(), 5, 1)
        );
        let mut q = sqlx::query(&sql);
        for ((t, l, c), n) in chunk {
            q = q.bind(t.as_str()).bind(l.as_str()).bind(c.as_str()).bind(window_start).bind(**n);
        }
        q.execute(&mut **tx).await?;
    }
    let mut decided: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (c, d) in items.iter().zip(&decisions) {
        let outcome = match d {
            Decision::Direct => "direct",
            Decision::Muted => "muted",
            Decision::Superseded => "superseded",
            Decision::Digest { .. } => "digest",
        };
        *decided.entry((c.category, outcome)).or_insert(0) += 1;
        tracing::debug!(event_id = %c.source_event_id, trace_id = ?c.trace.as_ref().map(TraceContext::to_traceparent), category = c.category, outcome, "notification decided");
    }
    let mut planned: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for d in &deliveries {
        *planned.entry((d.category, d.channel)).or_insert(0) += 1;
    }
    // Counted when the batch's transaction is committed (a failed batch counts nothing).
    Ok(Decided {
        deliveries: deliveries.len(),
        decided: decided.into_iter().map(|((c, d), n)| ((c.to_owned(), d), n)).collect(),
        planned: planned.into_iter().map(|((c, ch), n)| ((c.to_owned(), ch.to_owned()), n)).collect(),
    })
}

/// What a batch decided, for the metrics once it is committed.
#[derive(Default)]
struct Decided {
    deliveries: usize,
    decided: Vec<((String, &'static str), u64)>,
    planned: Vec<((String, String), u64)>,
}

impl Decided {
    fn count(&self, metrics: &NotifyMetrics) {
        for ((category, decision), n) in &self.decided {
            metrics.decided.with_label_values(&[category.as_str(), decision]).inc_by(*n);
        }
        for ((category, channel), n) in &self.planned {
            metrics.planned.with_label_values(&[category.as_str(), channel.as_str()]).inc_by(*n);
        }
    }
}

#[cfg(test)]
mod tests {
    use lms_bus::{Batch, BusMetrics, KafkaConfig, PartitionOffsets, Processor as _, Producer, TopicPartition, TopicsFile};
    use lms_events::Event;
    use lms_events::data::AchievementUnlocked;

    use super::super::inbox;
    use super::*;

    fn record(event: Event, offset: i64) -> Record {
        Record::for_test(event, "derived", offset)
    }

    /// A batch of `records` on partition 0 of `derived`, moving its offset from `expected`.
    fn batch(records: Vec<Record>, expected: Option<i64>, next: i64) -> Batch {
        Batch {
            group: Arc::from("lms-notifications"),
            records,
            offsets: vec![PartitionOffsets { tp: TopicPartition::new("derived", 0), expected, next }],
            dead_letters: Default::default(),
        }
    }

    /// An in-memory store, `config` with no templates, its clock at the start of a throttle
    /// window, and the processor.
    async fn fixture(config: NotifyConfig) -> (Store, Arc<Settings>, Stateful<Notifications>) {
        let store = crate::open_store("sqlite::memory:", 1).await.expect("store");
        let settings = Arc::new(Settings::new(config, Templates::from_sets([])));
        let into_window = settings.clock.now().timestamp().rem_euclid(3600);
        settings.clock.advance(std::time::Duration::from_secs(u64::try_from(3601 - into_window).unwrap_or(1)));
        let processor = processor(store.clone(), Arc::clone(&settings));
        (store, settings, processor)
    }

    fn unlock(learner: &str, n: usize) -> Event {
        let data = AchievementUnlocked {
            learner_id: learner.to_owned(),
            achievement_id: format!("a{n}"),
            title: format!("Badge {n}"),
            course_id: None,
            unlocked_at: Utc::now(),
        };
        Event::derived("acme", "test", Utc::now(), EventData::AchievementUnlocked(data))
    }

    /// The whole path on SQLite (the embedded default): decide with throttle and digest,
    /// dedupe a redelivery, deliver in-app, close the digest when its window ends.
    #[tokio::test]
    async fn sqlite_decides_throttles_digests_and_delivers_in_app() {
        let (store, settings, processor) = fixture(NotifyConfig { throttle_per_window: 2, ..NotifyConfig::default() }).await;
        let events: Vec<Event> = (0..5).map(|n| unlock("ada", n)).collect();
        let records: Vec<Record> = events.iter().enumerate().map(|(i, e)| record(e.clone(), i as i64)).collect();
        processor.process(&batch(records, None, 5)).await.expect("first batch");
        // The same events again (a redelivery): nothing new.
        let again: Vec<Record> = events.iter().enumerate().map(|(i, e)| record(e.clone(), 5 + i as i64)).collect();
        processor.process(&batch(again, Some(5), 10)).await.expect("redelivery");
        let count = |sql: &'static str| {
            let store = store.clone();
            async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(store.pool()).await.expect(sql) }
        };
        assert_eq!(count("SELECT COUNT(*) FROM notifications").await, 5);
        assert_eq!(count("SELECT COUNT(*) FROM notifications WHERE state = 'digest'").await, 3);
        assert_eq!(count("SELECT COUNT(*) FROM notification_deliveries").await, 2, "in-app only, for the two within the limit");

        let topics = TopicsFile::bundled().topic_map("unit.");
        let producer =
            Arc::new(Producer::new(&KafkaConfig::new("127.0.0.1:9"), topics, BusMetrics::standalone(), "unit").expect("producer"));
        let dispatcher = dispatcher::Dispatcher::new(
            store.clone(),
            Arc::clone(&settings),
            producer,
            Arc::new(Notify::new()),
            "lms-notifications".into(),
        );
        assert_eq!(dispatcher.round().await.expect("round"), 2);
        assert_eq!(inbox::list(&store, "acme", "ada", false).await.expect("inbox").len(), 2);
        settings.clock.advance(std::time::Duration::from_secs(3600));
        assert_eq!(dispatcher.round().await.expect("round"), 1, "the digest's in-app delivery");
        let listed = inbox::list(&store, "acme", "ada", true).await.expect("inbox");
        assert_eq!(listed.len(), 3);
        assert_eq!((listed[0].category.as_str(), listed[0].title.as_str()), ("digest", "3 new notifications"));
        assert_eq!(dispatcher.round().await.expect("round"), 0, "nothing twice");
        assert_eq!(count("SELECT COUNT(*) FROM outbox").await, 3, "one notification.sent per delivery");
        assert!(inbox::mark_read(&store, "acme", "ada", &listed[0].id).await.expect("mark"));
        assert_eq!(inbox::list(&store, "acme", "ada", true).await.expect("inbox").len(), 2);
    }

    /// A batch mixing a redelivered event with new ones: the old one is not decided again
    /// and takes no throttle slot from the new ones (the insert names the new rows; the
    /// batch is decided again without the old one).
    #[tokio::test]
    async fn sqlite_redelivered_events_take_no_throttle_slot_from_new_ones() {
        let (store, settings, processor) = fixture(NotifyConfig { throttle_per_window: 2, ..NotifyConfig::default() }).await;
        let events: Vec<Event> = (0..3).map(|n| unlock("ada", n)).collect();
        processor.process(&batch(vec![record(events[0].clone(), 0)], None, 1)).await.expect("first");
        let mixed: Vec<Record> = events.iter().enumerate().map(|(i, e)| record(e.clone(), 1 + i as i64)).collect();
        processor.process(&batch(mixed, Some(1), 4)).await.expect("mixed");
        let states: Vec<(String, String)> =
            sqlx::query_as("SELECT source_event_id, state FROM notifications").fetch_all(store.pool()).await.expect("states");
        let state = |e: &Event| states.iter().find(|(id, _)| *id == e.id).map(|(_, s)| s.clone());
        assert_eq!(states.len(), 3);
        assert_eq!(
            [state(&events[0]), state(&events[1]), state(&events[2])],
            [Some("direct".into()), Some("direct".into()), Some("digest".into())]
        );
        let sent: i64 = sqlx::query_scalar("SELECT sent FROM notification_counters").fetch_one(store.pool()).await.expect("counter");
        assert_eq!(sent, 2);
        let m = &settings.metrics;
        assert_eq!(
            (m.decided.with_label_values(&["achievement", "direct"]).get(), m.decided.with_label_values(&["achievement", "digest"]).get()),
            (2, 1)
        );
    }

    fn milestone(learner: &str, percent: f64) -> Event {
        let data = lms_events::data::ProgressUpdated {
            learner_id: learner.to_owned(),
            course_id: "rust-101".to_owned(),
            course_version: 1,
            lessons_completed: 3,
            lessons_total: 10,
            percent_complete: percent,
            status: ProgressStatus::InProgress,
            time_spent_s: 0.0,
            last_activity_at: Some(Utc::now()),
            completed_at: None,
            revision: 1,
        };
        Event::derived("acme", "test", Utc::now(), EventData::ProgressUpdated(data))
    }

    /// The retention on SQLite: delivered and failed deliveries, their attempts, decided
    /// notifications, closed digests and old throttle counters go in bounded batches once
    /// older than `retention_days`; milestones, pending deliveries and their notifications
    /// stay; the metrics follow.
    #[tokio::test]
    async fn sqlite_retention_deletes_what_is_done_and_old_and_keeps_the_rest() {
        let mut config = NotifyConfig { throttle_per_window: 2, retention_days: 1, ..NotifyConfig::default() };
        config.dispatcher.purge_batch_rows = 2;
        let (store, settings, processor) = fixture(config).await;
        let mut events: Vec<Event> = (0..5).map(|n| unlock("ada", n)).collect();
        events.push(milestone("ada", 30.0));
        let records: Vec<Record> = events.iter().enumerate().map(|(i, e)| record(e.clone(), i as i64)).collect();
        processor.process(&batch(records, None, 6)).await.expect("batch");
        let m = &settings.metrics;
        assert_eq!(m.decided.with_label_values(&["achievement", "direct"]).get(), 2);
        assert_eq!(m.decided.with_label_values(&["achievement", "digest"]).get(), 3);
        assert_eq!(m.decided.with_label_values(&["milestone", "direct"]).get(), 1);
        assert_eq!(m.planned.with_label_values(&["achievement", "in_app"]).get(), 2);

        let topics = TopicsFile::bundled().topic_map("unit.");
        let producer =
            Arc::new(Producer::new(&KafkaConfig::new("127.0.0.1:9"), topics, BusMetrics::standalone(), "unit").expect("producer"));
        let dispatcher = dispatcher::Dispatcher::new(
            store.clone(),
            Arc::clone(&settings),
            producer,
            Arc::new(Notify::new()),
            "lms-notifications".into(),
        );
        dispatcher.refresh_gauges().await.expect("gauges");
        assert_eq!(m.pending.with_label_values(&["in_app"]).get(), 3);
        assert_eq!(m.digests_open.get(), 1);
        assert_eq!(dispatcher.round().await.expect("round"), 3);
        assert_eq!(m.attempts.with_label_values(&["in_app", "sent"]).get(), 3);
        assert_eq!(dispatcher.purge().await.expect("purge"), 0, "nothing is old yet");

        // Two days later: the digest closes and is delivered; a new notification is decided
        // and left pending (no round).
        settings.clock.advance(std::time::Duration::from_secs(2 * 86_400));
        assert_eq!(dispatcher.round().await.expect("round"), 1, "the digest");
        let late = unlock("bob", 9);
        processor.process(&batch(vec![record(late, 6)], Some(6), 7)).await.expect("late batch");
        // An old pending delivery (say, deferred for days): kept with its notification.
        sqlx::query(
            "UPDATE notification_deliveries SET state = 'pending', due_at_us = $1 WHERE notification_id = \
             (SELECT id FROM notifications WHERE learner_id = 'ada' AND category = 'achievement' AND state = 'direct' ORDER BY id LIMIT 1)",
        )
        .bind(to_us(settings.clock.now()) + 3_600_000_000)
        .execute(store.pool())
        .await
        .expect("pending");
        dispatcher.refresh_gauges().await.expect("gauges");
        assert_eq!((m.pending.with_label_values(&["in_app"]).get(), m.digests_open.get()), (2, 0));

        let count = |sql: &'static str| {
            let store = store.clone();
            async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(store.pool()).await.expect(sql) }
        };
        let deleted = dispatcher.purge().await.expect("purge");
        // 3 attempts (2 achievements + milestone), 2 deliveries (an achievement's, the
        // milestone's), 4 notifications (1 direct, 3 digested), 1 digest row, 2 counters
        // (achievement, milestone).
        assert_eq!(deleted, 3 + 2 + 4 + 1 + 2, "in batches of 2");
        assert_eq!(m.purged.with_label_values(&["notifications"]).get(), 4);
        let left: Vec<(String, String)> = sqlx::query_as("SELECT learner_id, category FROM notifications ORDER BY learner_id, category")
            .fetch_all(store.pool())
            .await
            .expect("left");
        let left: Vec<(&str, &str)> = left.iter().map(|(l, c)| (l.as_str(), c.as_str())).collect();
        assert_eq!(left, [("ada", "achievement"), ("ada", "digest"), ("ada", "milestone"), ("bob", "achievement")]);
        assert_eq!(count("SELECT COUNT(*) FROM notification_deliveries").await, 3, "the digest's (recent), the pending one, bob's");
        assert_eq!(count("SELECT COUNT(*) FROM notification_attempts").await, 1, "the digest's");
        assert_eq!(count("SELECT COUNT(*) FROM notification_digests").await, 0);
        assert_eq!(count("SELECT COUNT(*) FROM notification_counters").await, 1, "bob's current window");
        assert_eq!(dispatcher.purge().await.expect("purge"), 0, "idempotent");

        // A milestone is once per course for ever: reaching it again notifies nobody.
        processor.process(&batch(vec![record(milestone("ada", 40.0), 7)], Some(7), 8)).await.expect("milestone again");
        assert_eq!(count("SELECT COUNT(*) FROM notifications WHERE category = 'milestone'").await, 1);
    }

    #[test]
    fn amounts_have_two_decimals() {
        assert_eq!(amount(1234), "12.34");
        assert_eq!(amount(5), "0.05");
        assert_eq!(amount(100_000), "1000.00");
    }

    #[test]
    fn hourly_and_daily_digest_windows() {
        let settings = Settings::default();
        let now = DateTime::parse_from_rfc3339("2026-11-21T10:20:00Z").unwrap().with_timezone(&Utc);
        let hourly = Preferences { digest: Digest::Hourly, ..Preferences::default() };
        let (key, due) = digest_window(&settings, &hourly, now).unwrap();
        let ten = to_us(DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z").unwrap().with_timezone(&Utc));
        assert_eq!((key.as_str(), due), (format!("hourly:{ten}").as_str(), ten + 3_600_000_000));
        let daily = Preferences { digest: Digest::Daily, timezone: "Europe/Berlin".into(), ..Preferences::default() };
        let (_, due) = digest_window(&settings, &daily, now).unwrap();
        let midnight = to_us(DateTime::parse_from_rfc3339("2026-11-21T23:00:00Z").unwrap().with_timezone(&Utc));
        assert_eq!(due, midnight, "the end of the learner's local day");
        assert!(digest_window(&settings, &Preferences::default(), now).is_none());
    }
}
