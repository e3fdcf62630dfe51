//! The dispatcher: performs the delivery intents the processor wrote, and closes digest
//! timers when due. Restart-safe and safe to run in several processes at once.
//!
//! A round:
//! 1. Close due digests: the `open` digest rows due by now are taken (`FOR UPDATE SKIP
//!    LOCKED` on PostgreSQL, so two dispatchers take different ones; a processor adding an
//!    item to the same row waits for the close and then sees it `sent`), and each becomes,
//!    in one transaction, a `digest` notification of its items with its delivery intents,
//!    the items `digested` and the row `sent`. A crash before the commit leaves the row
//!    open; after it, the digest exists once (its id is derived from the row's key).
//! 2. Claim due deliveries: a short transaction stamps up to `batch_rows` pending, due,
//!    unclaimed (or expired-claim) rows with this round's claim and counts the attempt.
//! 3. Perform them (`concurrency` at once): in-app needs nothing outside; e-mail goes to
//!    the SMTP server; the webhook is POSTed with `Lms-Signature: t=<unix>,v1=<hex
//!    HMAC-SHA256 of "<t>.<body>">`.
//! 4. Record, in one transaction and only for rows still holding this claim: each attempt
//!    in `notification_attempts`, `sent` (in-app: the inbox entry becomes visible), a retry
//!    due after exponential back-off, or `failed` for good; and per attempt a
//!    `notification.sent` / `notification.failed` event in the outbox. A delivery that
//!    failed for good is dead-lettered (acknowledged by the broker) before that commit.
//!
//! A crash between performing and recording repeats the delivery once the claim expires:
//! delivery is at least once, each attempt's event has an id derived from the attempt.
//!
//! An SMTP server that cannot be reached (refused, timed out, connection closed) is an
//! outage, not a failure of the e-mail: the attempt is recorded as a retry that does not
//! count against `max_attempts`, and the SMTP circuit opens: e-mails are neither claimed
//! nor attempted until it half-opens (after `retry_base_ms`, doubling up to
//! `retry_max_ms`), when the next e-mail probes the server; one sent closes it. So an
//! outage of any length delays e-mails, dead-letters none, and costs one connection
//! attempt per period rather than one per e-mail. `/readyz` of `lms processor run`
//! reports the server ([`smtp_ready`]).
//!
//! Between rounds, every `purge_interval_s`, the retention is applied ([`Dispatcher::purge`]),
//! and every five seconds the pending-deliveries and open-digests gauges are refreshed (two
//! COUNTs on partial indexes).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use lms_bus::{OnQueueFull, Producer, RawRecord, TopicPartition};
use lms_events::data::{Channel, NotificationOutcome};
use lms_events::{Domain, Event, EventData, TraceContext, codec};
use lms_state::sql::{CHUNK_ROWS, from_us, to_us, values};
use lms_state::{Backend, Store, StoreError, Tx, outbox};
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::SOURCE;
use super::config::{SmtpConfig, SmtpTls};
use super::decide::{NotificationRow, Settings, deliveries_for, insert_deliveries, insert_notifications, notification_id};
use super::preferences::{self, Preferences};
use crate::derived_id;

/// How often the dispatcher refreshes its gauges.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Performs deliveries; see the module doc.
pub struct Dispatcher {
    store: Store,
    settings: Arc<Settings>,
    producer: Arc<Producer>,
    relay: Arc<Notify>,
    group: String,
    mailer: Result<AsyncSmtpTransport<Tokio1Executor>, String>,
    from: Result<Mailbox, String>,
    http: reqwest::Client,
    smtp: Circuit,
}

/// A claimed delivery.
#[derive(Debug, Clone)]
struct Claimed {
    tenant: String,
    notification_id: String,
    channel: String,
    learner: String,
    category: String,
    source_event_id: String,
    target: Option<String>,
    attempt: i64,
    title: String,
    body: String,
    created_at_us: i64,
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Sent,
    /// Failed; may succeed later.
    Retry(String),
    /// The SMTP server could not be reached (refused, timed out, cut): retried once the
    /// SMTP circuit closes, and never counted against `max_attempts`.
    Unavailable(String),
    /// Not attempted: the SMTP circuit was open (the server was unreachable moments ago).
    /// The delivery goes back to pending, its attempt uncounted.
    Deferred,
    /// Failed for good.
    Failed(String),
}

impl Outcome {
    /// The `outcome` of the attempt row and the metric.
    fn label(&self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Retry(_) | Outcome::Unavailable(_) | Outcome::Deferred => "retry",
            Outcome::Failed(_) => "failed",
        }
    }

    fn error(&self) -> Option<&str> {
        match self {
            Outcome::Sent | Outcome::Deferred => None,
            Outcome::Retry(w) | Outcome::Unavailable(w) | Outcome::Failed(w) => Some(w),
        }
    }
}

/// The SMTP circuit: open (e-mails are not attempted, not claimed) until a clock time
/// after an attempt found the server unreachable; the open period doubles from
/// `retry_base_ms` up to `retry_max_ms` while the outage lasts, and a sent e-mail closes it.
#[derive(Debug, Default)]
struct Circuit {
    /// Open until then (clock µs); 0 when closed.
    open_until_us: AtomicI64,
    /// The last open period, in milliseconds.
    period_ms: AtomicU64,
}

impl Circuit {
    fn open_until(&self, now_us: i64) -> Option<i64> {
        let until = self.open_until_us.load(Ordering::Relaxed);
        (until > now_us).then_some(until)
    }

    /// Opens (or keeps open) after a failed connection; answers until when.
    fn trip(&self, now_us: i64, config: &super::config::DispatcherConfig) -> i64 {
        if let Some(until) = self.open_until(now_us) {
            return until;
        }
        let last = self.period_ms.load(Ordering::Relaxed);
        let period = if last == 0 { config.retry_base_ms } else { last.saturating_mul(2) }.clamp(1, config.retry_max_ms.max(1));
        self.period_ms.store(period, Ordering::Relaxed);
        let until = now_us + i64::try_from(period).unwrap_or(i64::MAX / 2_000) * 1000;
        self.open_until_us.store(until, Ordering::Relaxed);
        until
    }

    fn close(&self) {
        self.open_until_us.store(0, Ordering::Relaxed);
        self.period_ms.store(0, Ordering::Relaxed);
    }
}

/// Whether an SMTP error means the server could not be reached (rather than an answer):
/// refused, timed out, reset, TLS, or the connection closed before a complete reply (lettre
/// calls that last one a response error, "incomplete response").
fn unreachable(e: &lettre::transport::smtp::Error) -> bool {
    if e.is_transient() || e.is_permanent() || e.is_client() {
        return false;
    }
    !e.is_response() || e.to_string().ends_with("incomplete response")
}

/// The SMTP check of a processor's `/readyz`: connects to the configured server and
/// exchanges a NOOP within `timeout`. Ok when e-mail is disabled.
pub async fn smtp_ready(smtp: &SmtpConfig, timeout: Duration) -> Result<(), String> {
    if !smtp.enabled {
        return Ok(());
    }
    let transport = mailer(&SmtpConfig { timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(2000), ..smtp.clone() })?;
    match tokio::time::timeout(timeout, transport.test_connection()).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(format!("{}:{} did not answer NOOP", smtp.host, smtp.port)),
        Ok(Err(e)) => Err(format!("{}:{}: {e}", smtp.host, smtp.port)),
        Err(_) => Err(format!("{}:{}: timed out", smtp.host, smtp.port)),
    }
}

fn mailer(smtp: &SmtpConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let builder = match smtp.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str()),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host).map_err(|e| e.to_string())?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(|e| e.to_string())?,
    };
    let mut builder = builder.port(smtp.port).timeout(Some(Duration::from_millis(smtp.timeout_ms)));
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(builder.build())
}

/// `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the scheme the payment webhook verifies.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    lms_events::signature::sign(secret.as_bytes(), t, body)
}

/// Starts the dispatcher of the notifications component (its [`crate::Registered::service`]):
/// one per process that runs the processor, until `stop`. Needs the settings the
/// component's `prepare` made (never defaults: they would deliver with no templates).
pub fn start(
    ctx: &crate::Context,
    plumbing: &crate::runtime::Plumbing,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let settings = ctx.require::<Arc<Settings>>("notifications")?;
    let dispatcher = Dispatcher::new(
        ctx.store.clone(),
        settings,
        Arc::clone(&plumbing.producer),
        Arc::clone(&ctx.relay),
        plumbing.kafka.group_id("notifications"),
    );
    Ok(tokio::spawn(dispatcher.run(stop)))
}

impl Dispatcher {
    /// A dispatcher on `store`; dead letters name the consumer group `group`.
    pub fn new(store: Store, settings: Arc<Settings>, producer: Arc<Producer>, relay: Arc<Notify>, group: String) -> Dispatcher {
        let smtp = &settings.config.smtp;
        let mailer = mailer(smtp);
        if let Err(e) = &mailer {
            tracing::error!(error = %e, host = %smtp.host, "SMTP transport cannot be built; e-mails will fail");
        }
        let from = smtp.from.parse::<Mailbox>().map_err(|e| format!("notifications.smtp.from {:?}: {e}", smtp.from));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.config.dispatcher.webhook_timeout_ms))
            .build()
            .unwrap_or_default();
        Dispatcher { store, settings, producer, relay, group, mailer, from, http, smtp: Circuit::default() }
    }

    /// Runs rounds until `stop`; a round in progress finishes first.
    pub async fn run(self, stop: CancellationToken) {
        let config = &self.settings.config.dispatcher;
        let poll = Duration::from_millis(config.poll_interval_ms.max(1));
        let purge_every = Duration::from_secs(config.purge_interval_s.max(1));
        let mut backoff = Duration::from_millis(100);
        let (mut gauged, mut purged): (Option<Instant>, Option<Instant>) = (None, None);
        loop {
            if stop.is_cancelled() {
                break;
            }
            if gauged.is_none_or(|t| t.elapsed() >= GAUGE_INTERVAL) {
                gauged = Some(Instant::now());
                if let Err(e) = self.refresh_gauges().await {
                    tracing::debug!(error = %e, "notification gauges not refreshed");
                }
            }
            if purged.is_none_or(|t| t.elapsed() >= purge_every) {
                purged = Some(Instant::now());
                match self.purge().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(rows = n, retention_days = self.settings.config.retention_days, "notification retention applied");
                    }
                    Err(e) => tracing::warn!(error = %e, "notification retention failed; retried at the next interval"),
                }
            }
            match self.round().await {
                Ok(claimed) => {
                    backoff = Duration::from_millis(100);
                    if claimed as i64 >= config.batch_rows {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notification dispatcher round failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.settings.dispatcher.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Sets the pending-deliveries and open-digests gauges from the store.
    pub async fn refresh_gauges(&self) -> Result<(), StoreError> {
        let rows = sqlx::query("SELECT channel, COUNT(*) FROM notification_deliveries WHERE state = 'pending' GROUP BY channel")
            .fetch_all(self.store.pool())
            .await?;
        let mut pending: std::collections::BTreeMap<String, i64> =
            ["in_app", "email", "webhook"].into_iter().map(|c| (c.to_owned(), 0)).collect();
        for r in rows {
            pending.insert(r.try_get(0)?, r.try_get(1)?);
        }
        for (channel, n) in pending {
            self.settings.metrics.pending.with_label_values(&[channel.as_str()]).set(n);
        }
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM notification_digests WHERE state = 'open'").fetch_one(self.store.pool()).await?;
        self.settings.metrics.digests_open.set(open);
        Ok(())
    }

    /// Applies the retention (`notifications.retention_days`, see there) at the clock's
    /// now: bounded DELETEs of `purge_batch_rows`, each its own short transaction, until
    /// nothing older is left. Throttle counters go once their window is two windows old.
    /// Answers the rows deleted.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let Some(retention) = self.settings.config.retention_us() else {
            return Ok(0);
        };
        let now_us = to_us(self.settings.clock.now());
        let cutoff = now_us - retention;
        let counters_cutoff = now_us - 2 * self.settings.window_us();
        let limit = self.settings.config.dispatcher.purge_batch_rows.max(1);
        // Children before parents: a notification goes once its deliveries are gone.
        let statements: [(&str, &str, i64); 5] = [
            (
                "notification_attempts",
                "DELETE FROM notification_attempts WHERE (tenant, notification_id, channel, attempt) IN \
                 (SELECT tenant, notification_id, channel, attempt FROM notification_attempts WHERE at_us < $1 LIMIT $2)",
                cutoff,
            ),
            (
                "notification_deliveries",
                "DELETE FROM notification_deliveries WHERE (tenant, notification_id, channel) IN \
                 (SELECT tenant, notification_id, channel FROM notification_deliveries WHERE state <> 'pending' AND updated_at_us < $1 LIMIT $2)",
                cutoff,
            ),
            (
                "notifications",
                "DELETE FROM notifications WHERE (tenant, id) IN (SELECT n.tenant, n.id FROM notifications n \
                 WHERE n.created_at_us < $1 AND n.state <> 'digest' AND n.source_key NOT LIKE 'milestone:%' \
                 AND NOT EXISTS (SELECT 1 FROM notification_deliveries d WHERE d.tenant = n.tenant AND d.notification_id = n.id) LIMIT $2)",
                cutoff,
            ),
            (
                "notification_digests",
                "DELETE FROM notification_digests WHERE (tenant, learner_id, digest_key) IN \
                 (SELECT tenant, learner_id, digest_key FROM notification_digests WHERE state <> 'open' AND due_at_us < $1 LIMIT $2)",
                cutoff,
            ),
            (
                "notification_counters",
                "DELETE FROM notification_counters WHERE (tenant, learner_id, category, window_start_us) IN \
                 (SELECT tenant, learner_id, category, window_start_us FROM notification_counters WHERE window_start_us < $1 LIMIT $2)",
                counters_cutoff,
            ),
        ];
        let mut total = 0;
        for (table, sql, before) in statements {
            loop {
                let n = sqlx::query(sql).bind(before).bind(limit).execute(self.store.pool()).await?.rows_affected();
                if n > 0 {
                    self.settings.metrics.purged.with_label_values(&[table]).inc_by(n);
                    total += n;
                }
                if n < u64::try_from(limit).unwrap_or(u64::MAX) {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// One round (see the module doc); answers the number of deliveries claimed.
    pub async fn round(&self) -> Result<usize, StoreError> {
        let now = self.settings.clock.now();
        self.close_digests(now).await?;
        let (claim, claimed) = self.claim(now).await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let n = claimed.len();
        let concurrency = self.settings.config.dispatcher.concurrency.max(1);
        let results: Vec<(Claimed, Outcome)> = futures::stream::iter(claimed)
            .map(|c| async move {
                let span = tracing::info_span!("notification_delivery", event_id = %c.source_event_id,
                    notification_id = %c.notification_id, channel = %c.channel, attempt = c.attempt);
                let outcome = self.perform(&c).instrument(span).await;
                (c, outcome)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        self.record(&claim, results).await?;
        Ok(n)
    }

    async fn close_digests(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let now_us = to_us(now);
        let mut tx = self.store.begin().await?;
        let lock = if self.store.backend() == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "SELECT tenant, learner_id, digest_key FROM notification_digests WHERE state = 'open' AND due_at_us <= $1 \
             ORDER BY due_at_us LIMIT $2{lock}"
        );
        let due: Vec<(String, String, String)> = sqlx::query(&sql)
            .bind(now_us)
            .bind(self.settings.config.dispatcher.batch_rows)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        if due.is_empty() {
            return Ok(0);
        }
        let learners: Vec<(String, String)> = due.iter().map(|(t, l, _)| (t.clone(), l.clone())).collect();
        let prefs = preferences::load(&mut tx, &learners).await?;
        let defaults = Preferences::default();
        for (tenant, learner, key) in &due {
            let p = prefs.get(&(tenant.clone(), learner.clone())).unwrap_or(&defaults);
            let state = self.close_digest(&mut tx, p, tenant, learner, key, now).await?;
            sqlx::query("UPDATE notification_digests SET state = $4 WHERE tenant = $1 AND learner_id = $2 AND digest_key = $3")
                .bind(tenant.as_str())
                .bind(learner.as_str())
                .bind(key.as_str())
                .bind(state)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.settings.dispatcher.notify_one();
        Ok(due.len())
    }

    /// Composes one digest; answers the digest row's new state.
    async fn close_digest(
        &self,
        tx: &mut Tx,
        prefs: &Preferences,
        tenant: &str,
        learner: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<&'static str, StoreError> {
        let items = sqlx::query(
            "SELECT title, body, category FROM notifications WHERE tenant = $1 AND learner_id = $2 AND digest_key = $3 \
             AND state = 'digest' ORDER BY event_at_us, created_at_us, id",
        )
        .bind(tenant)
        .bind(learner)
        .bind(key)
        .fetch_all(&mut **tx)
        .await?;
        if items.is_empty() {
            return Ok("sent");
        }
        let items: Vec<Value> = items
            .into_iter()
            .map(|r| {
                Ok(json!({"title": r.try_get::<String, _>(0)?, "body": r.try_get::<String, _>(1)?, "category": r.try_get::<String, _>(2)?}))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let digest_category = key.strip_prefix("throttle:").and_then(|k| k.rsplit_once(':')).map(|(c, _)| c.to_owned());
        let vars = json!({"tenant": tenant, "learner_id": learner, "category": "digest", "count": items.len(),
                          "items": items, "digest_category": digest_category});
        let rendered = match self.settings.templates.render(tenant, &prefs.locale, "digest", &vars) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(tenant, learner_id = learner, digest = key, error = %e, "digest template failed; the digest is not sent");
                return Ok("failed");
            }
        };
        let now_us = to_us(now);
        let source_key = format!("digest:{key}");
        let id = notification_id(tenant, learner, &source_key);
        let row = NotificationRow {
            tenant: tenant.to_owned(),
            id: id.clone(),
            learner: learner.to_owned(),
            category: "digest",
            source_key,
            source_event_id: id.clone(),
            title: rendered.title,
            body: rendered.body,
            state: "direct",
            digest_key: None,
            event_at_us: now_us,
        };
        insert_notifications(tx, std::slice::from_ref(&row), now_us).await?;
        let deliveries = deliveries_for(&self.settings, prefs, tenant, learner, &id, "digest", &id, now);
        insert_deliveries(tx, &deliveries, now_us).await?;
        sqlx::query(
            "UPDATE notifications SET state = 'digested' WHERE tenant = $1 AND learner_id = $2 AND digest_key = $3 AND state = 'digest'",
        )
        .bind(tenant)
        .bind(learner)
        .bind(key)
        .execute(&mut **tx)
        .await?;
        tracing::info!(tenant, learner_id = learner, digest = key, notification_id = %id, items = vars["count"].as_u64(), "digest composed");
        Ok("sent")
    }

    async fn claim(&self, now: DateTime<Utc>) -> Result<(String, Vec<Claimed>), StoreError> {
        let now_us = to_us(now);
        let claim = uuid::Uuid::new_v4().to_string();
        let until = now_us + i64::try_from(self.settings.config.dispatcher.claim_ms).unwrap_or(60_000) * 1000;
        let lock = if self.store.backend() == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        // While the SMTP server is unreachable, e-mails wait in the table, unclaimed.
        let email = if self.smtp.open_until(now_us).is_some() { " AND channel <> 'email'" } else { "" };
        let sql = format!(
            "UPDATE notification_deliveries SET claim = $1, claimed_until_us = $2, attempts = attempts + 1 \
             WHERE (tenant, notification_id, channel) IN (SELECT tenant, notification_id, channel FROM notification_deliveries \
               WHERE state = 'pending' AND due_at_us <= $3 AND (claimed_until_us IS NULL OR claimed_until_us < $3){email} \
               ORDER BY due_at_us LIMIT $4{lock}) \
             RETURNING tenant, notification_id, channel, learner_id, category, source_event_id, target, attempts"
        );
        let mut tx = self.store.begin().await?;
        let rows = sqlx::query(&sql)
            .bind(claim.as_str())
            .bind(until)
            .bind(now_us)
            .bind(self.settings.config.dispatcher.batch_rows)
            .fetch_all(&mut *tx)
            .await?;
        let mut claimed: Vec<Claimed> = rows
            .into_iter()
            .map(|r| {
                Ok(Claimed {
                    tenant: r.try_get(0)?,
                    notification_id: r.try_get(1)?,
                    channel: r.try_get(2)?,
                    learner: r.try_get(3)?,
                    category: r.try_get(4)?,
                    source_event_id: r.try_get(5)?,
                    target: r.try_get(6)?,
                    attempt: r.try_get(7)?,
                    title: String::new(),
                    body: String::new(),
                    created_at_us: 0,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let mut ids: Vec<(&str, &str)> = Vec::new();
        for c in &claimed {
            ids.push((&c.tenant, &c.notification_id));
        }
        ids.sort_unstable();
        ids.dedup();
        let mut content = std::collections::HashMap::new();
        for chunk in ids.chunks(CHUNK_ROWS) {
            let sql = format!(
                "SELECT tenant, id, title, body, created_at_us FROM notifications WHERE (tenant, id) IN (VALUES {})",
                values(chunk.len(), 2, 1)
            );
            let mut q = sqlx::query(&sql);
            for (t, id) in chunk {
                q = q.bind(*t).bind(*id);
            }
            for r in q.fetch_all(&mut *tx).await? {
                let key: (String, String) = (r.try_get(0)?, r.try_get(1)?);
                content.insert(key, (r.try_get::<String, _>(2)?, r.try_get::<String, _>(3)?, r.try_get::<i64, _>(4)?));
            }
        }
        tx.commit().await?;
        for c in &mut claimed {
            if let Some((title, body, at)) = content.get(&(c.tenant.clone(), c.notification_id.clone())) {
                c.title.clone_from(title);
                c.body.clone_from(body);
                c.created_at_us = *at;
            }
        }
        Ok((claim, claimed))
    }

    async fn perform(&self, c: &Claimed) -> Outcome {
        match c.channel.as_str() {
            "in_app" => Outcome::Sent,
            "email" => self.email(c).await,
            "webhook" => self.webhook(c).await,
            other => Outcome::Failed(format!("unknown channel {other:?}")),
        }
    }

    async fn email(&self, c: &Claimed) -> Outcome {
        let mailer = match &self.mailer {
            Ok(m) => m,
            Err(e) => return Outcome::Retry(format!("SMTP transport: {e}")),
        };
        let from = match &self.from {
            Ok(f) => f.clone(),
            Err(e) => return Outcome::Retry(e.clone()),
        };
        let to: Mailbox = match c.target.as_deref().unwrap_or_default().parse() {
            Ok(m) => m,
            Err(e) => return Outcome::Failed(format!("recipient address: {e}")),
        };
        let message = Message::builder().from(from).to(to).subject(c.title.as_str()).header(ContentType::TEXT_PLAIN).body(c.body.clone());
        let message = match message {
            Ok(m) => m,
            Err(e) => return Outcome::Failed(format!("message: {e}")),
        };
        if self.smtp.open_until(to_us(self.settings.clock.now())).is_some() {
            return Outcome::Deferred;
        }
        match mailer.send(message).await {
            Ok(_) => {
                self.smtp.close();
                Outcome::Sent
            }
            Err(e) if e.is_permanent() => Outcome::Failed(format!("SMTP: {e}")),
            Err(e) if unreachable(&e) => {
                let until = self.smtp.trip(to_us(self.settings.clock.now()), &self.settings.config.dispatcher);
                tracing::warn!(error = %e, host = %self.settings.config.smtp.host, port = self.settings.config.smtp.port,
                    retry_at = %from_us(until).map(|t| t.to_rfc3339()).unwrap_or_default(), "SMTP server unreachable; e-mails wait");
                Outcome::Unavailable(format!("SMTP server unreachable: {e}"))
            }
            Err(e) => Outcome::Retry(format!("SMTP: {e}")),
        }
    }

    async fn webhook(&self, c: &Claimed) -> Outcome {
        let Some(hook) = self.settings.config.webhooks.get(&c.tenant) else {
            return Outcome::Failed(format!("tenant {:?} has no webhook configured", c.tenant));
        };
        let created_at = from_us(c.created_at_us).map(|t| t.to_rfc3339()).unwrap_or_default();
        let body = json!({"id": c.notification_id, "tenant": c.tenant, "learner_id": c.learner, "category": c.category,
                          "title": c.title, "body": c.body, "source_event_id": c.source_event_id, "created_at": created_at})
        .to_string();
        let t = Utc::now().timestamp();
        let response = self
            .http
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("Lms-Tenant", c.tenant.as_str())
            .header("Lms-Signature", signature(hook.secret.expose(), t, body.as_bytes()))
            .header("Lms-Delivery", format!("{}:{}", c.notification_id, c.attempt))
            .body(body)
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => Outcome::Sent,
            Ok(r) => {
                let s = r.status();
                let why = format!("webhook answered {s}");
                if s.is_client_error() && s.as_u16() != 408 && s.as_u16() != 429 { Outcome::Failed(why) } else { Outcome::Retry(why) }
            }
            Err(e) => Outcome::Retry(format!("webhook: {e}")),
        }
    }

    async fn record(&self, claim: &str, mut results: Vec<(Claimed, Outcome)>) -> Result<(), StoreError> {
        let now = self.settings.clock.now();
        let now_us = to_us(now);
        let max_attempts = i64::from(self.settings.config.dispatcher.max_attempts.max(1));
        for (c, o) in &mut results {
            if let Outcome::Retry(why) = o
                && c.attempt >= max_attempts
            {
                *o = Outcome::Failed(format!("{why} (after {} attempts)", c.attempt));
            }
        }
        // Dead letters first: a failure is final only once its dead letter is acknowledged.
        let failed: Vec<usize> = (0..results.len()).filter(|i| matches!(results[*i].1, Outcome::Failed(_))).collect();
        if !failed.is_empty() {
            let records = failed
                .iter()
                .map(|i| {
                    let (c, o) = &results[*i];
                    let reason = match o {
                        Outcome::Failed(w) => w.as_str(),
                        _ => "",
                    };
                    let event = outcome_event(c, o, now);
                    let raw = RawRecord {
                        tp: TopicPartition::new(self.producer.topics().topic(Domain::Derived), -1),
                        offset: -1,
                        key: Some(c.learner.as_bytes().to_vec()),
                        payload: Some(codec::encode(&event)),
                        headers: vec![(codec::headers::CONTENT_TYPE.to_owned(), codec::CONTENT_TYPE.as_bytes().to_vec())],
                        timestamp_ms: None,
                    };
                    self.producer.dead_letter_record(&raw, &self.group, &format!("notification delivery failed: {reason}"))
                })
                .collect();
            let acks = self.producer.send(records, OnQueueFull::Wait(Duration::from_secs(10))).await;
            for (i, ack) in failed.iter().zip(acks) {
                if let Err(e) = ack {
                    // Not dead-lettered: the delivery stays pending and fails again later.
                    tracing::warn!(error = %e, notification_id = %results[*i].0.notification_id, "dead letter not acknowledged");
                    let why = match &results[*i].1 {
                        Outcome::Failed(w) => w.clone(),
                        _ => String::new(),
                    };
                    results[*i].1 = Outcome::Retry(why);
                }
            }
        }

        let mut tx = self.store.begin().await?;
        let mut ours: Vec<&(Claimed, Outcome)> = Vec::with_capacity(results.len());
        let sent: Vec<&(Claimed, Outcome)> = results.iter().filter(|(_, o)| *o == Outcome::Sent).collect();
        for chunk in sent.chunks(CHUNK_ROWS) {
            let sql = format!(
                "UPDATE notification_deliveries SET state = 'sent', claim = NULL, claimed_until_us = NULL, last_error = NULL, \
                 updated_at_us = $2 WHERE claim = $1 AND (tenant, notification_id, channel) IN (VALUES {}) \
                 RETURNING tenant, notification_id, channel",
                values(chunk.len(), 3, 3)
            );
            let mut q = sqlx::query(&sql).bind(claim).bind(now_us);
            for (c, _) in chunk {
                q = q.bind(c.tenant.as_str()).bind(c.notification_id.as_str()).bind(c.channel.as_str());
            }
            let mine: std::collections::HashSet<(String, String, String)> = q
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<_, sqlx::Error>>()?;
            ours.extend(chunk.iter().filter(|(c, _)| mine.contains(&(c.tenant.clone(), c.notification_id.clone(), c.channel.clone()))));
        }
        let smtp_back = self.smtp.open_until(now_us).unwrap_or(now_us);
        for r in results.iter().filter(|(_, o)| *o != Outcome::Sent) {
            let (c, o) = r;
            let (state, due, why, uncount) = match o {
                Outcome::Retry(why) => {
                    let delay = self.settings.config.dispatcher.backoff(u32::try_from(c.attempt).unwrap_or(u32::MAX));
                    ("pending", now_us + i64::try_from(delay.as_micros()).unwrap_or(i64::MAX / 2), why.as_str(), 0_i64)
                }
                // Due when the circuit half-opens: the first e-mail then probes the server.
                Outcome::Unavailable(why) => ("pending", smtp_back, why.as_str(), 0),
                Outcome::Deferred => ("pending", smtp_back, "SMTP server unreachable (not attempted)", 1),
                Outcome::Failed(why) => ("failed", now_us, why.as_str(), 0),
                Outcome::Sent => continue,
            };
            let done = sqlx::query(
                "UPDATE notification_deliveries SET state = $5, due_at_us = $6, last_error = $7, claim = NULL, claimed_until_us = NULL, \
                 updated_at_us = $8, attempts = attempts - $9 WHERE tenant = $1 AND notification_id = $2 AND channel = $3 AND claim = $4",
            )
            .bind(c.tenant.as_str())
            .bind(c.notification_id.as_str())
            .bind(c.channel.as_str())
            .bind(claim)
            .bind(state)
            .bind(due)
            .bind(why)
            .bind(now_us)
            .bind(uncount)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 && *o != Outcome::Deferred {
                ours.push(r);
            }
        }
        let deferred = results.iter().filter(|(_, o)| *o == Outcome::Deferred).count();
        if ours.len() + deferred < results.len() {
            tracing::warn!(
                lost = results.len() - ours.len(),
                "claims expired before their outcome was recorded; another dispatcher retries them"
            );
        }
        let visible: Vec<&Claimed> = ours.iter().filter(|(c, o)| *o == Outcome::Sent && c.channel == "in_app").map(|(c, _)| c).collect();
        for chunk in visible.chunks(CHUNK_ROWS) {
            let sql = format!(
                "UPDATE notifications SET visible_at_us = $1 WHERE visible_at_us IS NULL AND (tenant, id) IN (VALUES {})",
                values(chunk.len(), 2, 2)
            );
            let mut q = sqlx::query(&sql).bind(now_us);
            for c in chunk {
                q = q.bind(c.tenant.as_str()).bind(c.notification_id.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in ours.chunks(CHUNK_ROWS) {
            let sql = format!(
                "INSERT INTO notification_attempts (tenant, notification_id, channel, attempt, at_us, outcome, error) VALUES {} \
                 ON CONFLICT DO NOTHING",
                values(chunk.len(), 7, 1)
            );
            let mut q = sqlx::query(&sql);
            for (c, o) in chunk {
                let (outcome, error) = (o.label(), o.error());
                q = q
                    .bind(c.tenant.as_str())
                    .bind(c.notification_id.as_str())
                    .bind(c.channel.as_str())
                    .bind(c.attempt)
                    .bind(now_us)
                    .bind(outcome)
                    .bind(error);
            }
            q.execute(&mut *tx).await?;
        }
        let events: Vec<(Event, Option<TraceContext>)> = ours.iter().map(|(c, o)| (outcome_event(c, o, now), None)).collect();
        outbox::enqueue(&mut tx, &events).await?;
        tx.commit().await?;
        let mut attempts: std::collections::BTreeMap<(&str, &str), u64> = std::collections::BTreeMap::new();
        for (c, o) in &ours {
            *attempts.entry((c.channel.as_str(), o.label())).or_insert(0) += 1;
        }
        for ((channel, outcome), n) in attempts {
            self.settings.metrics.attempts.with_label_values(&[channel, outcome]).inc_by(n);
        }
        for (c, o) in &ours {
            match o {
                Outcome::Sent | Outcome::Deferred => {
                    tracing::debug!(event_id = %c.source_event_id, notification_id = %c.notification_id, channel = %c.channel, attempt = c.attempt, "notification delivered");
                }
                Outcome::Retry(w) | Outcome::Unavailable(w) | Outcome::Failed(w) => {
                    tracing::warn!(event_id = %c.source_event_id, notification_id = %c.notification_id, channel = %c.channel, attempt = c.attempt, error = %w, final_ = matches!(o, Outcome::Failed(_)), "notification delivery failed");
                }
            }
        }
        if !events.is_empty() {
            self.relay.notify_one();
        }
        Ok(())
    }
}

fn outcome_event(c: &Claimed, o: &Outcome, now: DateTime<Utc>) -> Event {
    let channel = match c.channel.as_str() {
        "email" => Channel::Email,
        "webhook" => Channel::Webhook,
        _ => Channel::InApp,
    };
    let outcome = NotificationOutcome {
        notification_id: c.notification_id.clone(),
        learner_id: c.learner.clone(),
        category: c.category.clone(),
        channel,
        source_event_id: c.source_event_id.clone(),
        attempt: u32::try_from(c.attempt).unwrap_or(u32::MAX).max(1),
        error: o.error().map(str::to_owned),
    };
    let data = if *o == Outcome::Sent { EventData::NotificationSent(outcome) } else { EventData::NotificationFailed(outcome) };
    let attempt = c.attempt.to_string();
    Event::derived(&c.tenant, SOURCE, now, data)
        .with_id(derived_id("notification.attempt", &[&c.tenant, &c.notification_id, &c.channel, &attempt]))
}
