//! Prometheus metrics of the notifications processor and its dispatcher, registered like
//! the bus's ([`lms_bus::BusMetrics`]): once per registry, shared. Counted per batch or
//! round, never per event; labels are bounded (category: the fixed categories plus
//! `digest`; channel; decision; outcome; table).

use std::sync::Arc;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric the notifications processor and its dispatcher export.
pub struct NotifyMetrics {
    /// `lms_notifications_decided_total{category,decision}`: notifications decided
    /// (decision: direct, digest, muted, superseded); redeliveries are not counted.
    pub decided: IntCounterVec,
    /// `lms_notifications_deliveries_planned_total{category,channel}`: delivery intents written.
    pub planned: IntCounterVec,
    /// `lms_notifications_delivery_attempts_total{channel,outcome}`: attempts recorded
    /// (outcome: sent, retry, failed).
    pub attempts: IntCounterVec,
    /// `lms_notifications_pending_deliveries{channel}`: deliveries not yet sent nor failed.
    pub pending: IntGaugeVec,
    /// `lms_notifications_digest_windows_pending`: digest timers still open.
    pub digests_open: IntGauge,
    /// `lms_notifications_purged_rows_total{table}`: rows deleted by the retention.
    pub purged: IntCounterVec,
}

impl NotifyMetrics {
    /// Registers the metrics in `registry`. Call once per registry and share the result.
    pub fn register(registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let m = Self {
            decided: IntCounterVec::new(
                Opts::new("lms_notifications_decided_total", "Notifications decided, by category and decision."),
                &["category", "decision"],
            )?,
            planned: IntCounterVec::new(
                Opts::new("lms_notifications_deliveries_planned_total", "Delivery intents written, by category and channel."),
                &["category", "channel"],
            )?,
            attempts: IntCounterVec::new(
                Opts::new("lms_notifications_delivery_attempts_total", "Delivery attempts recorded, by channel and outcome."),
                &["channel", "outcome"],
            )?,
            pending: IntGaugeVec::new(
                Opts::new("lms_notifications_pending_deliveries", "Deliveries pending (due or deferred), by channel."),
                &["channel"],
            )?,
            digests_open: IntGauge::new("lms_notifications_digest_windows_pending", "Digest windows open (not yet composed and sent).")?,
            purged: IntCounterVec::new(
                Opts::new("lms_notifications_purged_rows_total", "Rows deleted by the notification retention, by table."),
                &["table"],
            )?,
        };
        registry.register(Box::new(m.decided.clone()))?;
        registry.register(Box::new(m.planned.clone()))?;
        registry.register(Box::new(m.attempts.clone()))?;
        registry.register(Box::new(m.pending.clone()))?;
        registry.register(Box::new(m.digests_open.clone()))?;
        registry.register(Box::new(m.purged.clone()))?;
        // Every channel's gauge exists from the start (0 rather than absent).
        for channel in ["in_app", "email", "webhook"] {
            m.pending.with_label_values(&[channel]).set(0);
        }
        Ok(Arc::new(m))
    }

    /// Metrics in a registry of their own (tests, tools that export nothing).
    pub fn standalone() -> Arc<Self> {
        Self::register(&Registry::new()).expect("a fresh registry accepts every metric once")
    }
}

impl std::fmt::Debug for NotifyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyMetrics").finish_non_exhaustive()
    }
}
