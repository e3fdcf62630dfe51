//! Configuration of the notifications processor and its dispatcher (the `notifications`
//! section of the lms configuration), and the clock both read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lms_bus::Secret;
use serde::{Deserialize, Serialize};

/// The `notifications` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// The SMTP server e-mails are sent through.
    pub smtp: SmtpConfig,
    /// At most this many notifications per learner, category and throttle window; the
    /// rest of the window's notifications go into one digest at the window's end.
    pub throttle_per_window: u32,
    /// Length of the throttle window and of the `hourly` digest, in seconds (3600).
    pub window_s: u64,
    /// Length of the `daily` digest, in seconds (86 400); daily digests end at the
    /// learner's local midnight when it is 86 400.
    pub daily_window_s: u64,
    /// Webhooks per tenant: every notification of a learner of the tenant who keeps the
    /// webhook channel on is POSTed there, signed.
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// A directory of tenant templates, `<dir>/<tenant>/<locale>.yaml`; the shipped
    /// defaults (`config/templates/default`) apply where it has none.
    pub templates_dir: Option<PathBuf>,
    /// The delivery dispatcher.
    pub dispatcher: DispatcherConfig,
    /// Days delivered and failed deliveries, their attempts, closed digest timers and
    /// decided notifications (the inbox entries and the dedupe keys) are kept; the
    /// dispatcher deletes older ones in bounded batches every `dispatcher.purge_interval_s`.
    /// A source event redelivered or replayed after this many days would be notified
    /// again: no consumer redelivery comes that late, and replays must not reach further
    /// back. Milestone notifications (one per learner, course and milestone, for ever),
    /// notifications with a delivery still pending or waiting in an open digest, and the
    /// payers of payments (refunds may come much later) are kept. 0 keeps everything.
    pub retention_days: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            smtp: SmtpConfig::default(),
            throttle_per_window: 5,
            window_s: 3600,
            daily_window_s: 86_400,
            webhooks: BTreeMap::new(),
            templates_dir: None,
            dispatcher: DispatcherConfig::default(),
            retention_days: 30,
        }
    }
}

impl NotifyConfig {
    /// The retention in microseconds (`None`: keep everything).
    pub fn retention_us(&self) -> Option<i64> {
        (self.retention_days > 0).then(|| i64::from(self.retention_days) * 86_400 * 1_000_000)
    }
}

/// How e-mails are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain SMTP (a relay on the same host or network).
    None,
    /// STARTTLS after connecting (port 587).
    Starttls,
    /// TLS from the start (port 465).
    Tls,
}

/// The SMTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// E-mail is a channel of this deployment (true): e-mail deliveries are planned for
    /// learners with an address, and the processor's `/readyz` checks the SMTP server.
    /// False: in-app and webhooks only.
    pub enabled: bool,
    /// Host name (also the name its TLS certificate must have).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// User name, when the server wants credentials.
    pub username: Option<String>,
    /// Password of `username` (or `password_file`); never printed.
    pub password: Option<Secret>,
    /// The sender, such as `LMS <noreply@example.org>`.
    pub from: String,
    /// Connect and command timeout, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".to_owned(),
            port: 25,
            tls: SmtpTls::None,
            username: None,
            password: None,
            from: "LMS <noreply@localhost>".to_owned(),
            timeout_ms: 10_000,
        }
    }
}

/// A tenant's webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where notifications are POSTed.
    pub url: String,
    /// The HMAC-SHA256 key of the `Lms-Signature` header (or `secret_file`); never printed.
    pub secret: Secret,
}

/// The delivery dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Deliveries claimed per round.
    pub batch_rows: i64,
    /// Deliveries performed at once.
    pub concurrency: usize,
    /// How often to look for due work when nobody wakes the dispatcher, in milliseconds.
    pub poll_interval_ms: u64,
    /// How long a claim holds before another dispatcher may take the delivery over (the
    /// claimer crashed), in milliseconds.
    pub claim_ms: u64,
    /// Delay before the second attempt, doubled for each further one, in milliseconds.
    pub retry_base_ms: u64,
    /// Upper bound of the retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// Attempts per delivery before it fails for good (dead-lettered). Attempts that found
    /// the SMTP server unreachable (connection refused, timed out, cut) do not count: an
    /// outage delays e-mails, it does not fail them.
    pub max_attempts: u32,
    /// Timeout of one webhook request, in milliseconds.
    pub webhook_timeout_ms: u64,
    /// How often the retention (`notifications.retention_days`) is applied, in seconds.
    pub purge_interval_s: u64,
    /// Rows per DELETE statement of the retention (each its own short transaction).
    pub purge_batch_rows: i64,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            batch_rows: 200,
            concurrency: 16,
            poll_interval_ms: 500,
            claim_ms: 60_000,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            max_attempts: 8,
            webhook_timeout_ms: 10_000,
            purge_interval_s: 600,
            purge_batch_rows: 5000,
        }
    }
}

impl DispatcherConfig {
    /// The delay after failed attempt `attempt` (1-based): base × 2^(attempt−1), capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(30);
        Duration::from_millis(self.retry_base_ms.saturating_mul(factor).min(self.retry_max_ms))
    }
}

/// The time the processor and the dispatcher decide by: the system clock plus an offset
/// that tests move forward (quiet hours, throttle windows and digests without waiting).
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_us: Arc<AtomicI64>,
}

impl Clock {
    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::microseconds(self.offset_us.load(Ordering::Relaxed))
    }

    /// Moves the clock forward (tests).
    pub fn advance(&self, by: Duration) {
        let us = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.offset_us.fetch_add(us, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = DispatcherConfig { retry_base_ms: 100, retry_max_ms: 1000, ..DispatcherConfig::default() };
        let ms: Vec<u128> = (1..=6).map(|a| c.backoff(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn the_clock_moves_forward_when_told() {
        let clock = Clock::default();
        let before = clock.now();
        clock.advance(Duration::from_secs(3600));
        assert!(clock.now() - before >= chrono::Duration::seconds(3600));
    }
}
