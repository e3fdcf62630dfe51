//! Prometheus metrics of the bus. Counted per batch, never per event; labels are
//! bounded (group, topic, partition, error kind).

use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::error::BusError;

/// Every metric the bus exports.
pub struct BusMetrics {
    /// `lms_bus_produced_records_total{topic}`: records the broker acknowledged.
    pub produced: IntCounterVec,
    /// `lms_bus_produce_errors_total{topic,kind}`: records not produced (queue full, delivery).
    pub produce_errors: IntCounterVec,
    /// `lms_bus_consumed_records_total{group,topic}`: records fetched into batches.
    pub consumed: IntCounterVec,
    /// `lms_bus_processed_events_total{group}`: events whose batch was processed durably.
    pub processed: IntCounterVec,
    /// `lms_bus_batch_failures_total{group,kind}`: failed batch attempts (transient, permanent, fenced).
    pub batch_failures: IntCounterVec,
    /// `lms_bus_dead_lettered_records_total{group,topic}`: records sent to the dead-letter topic.
    pub dead_lettered: IntCounterVec,
    /// `lms_bus_tombstones_skipped_total{group,topic}`: records without a value (compacted
    /// topics' deletions) passed over without reaching the processor.
    pub tombstones: IntCounterVec,
    /// `lms_bus_batch_duration_seconds{group}`: from a batch's hand-over to its commit.
    pub batch_duration: HistogramVec,
    /// `lms_bus_consumer_lag_records{group,topic,partition}`: log end minus the member's position.
    pub consumer_lag: IntGaugeVec,
    /// `lms_bus_committed_offset{group,topic,partition}`: the last offset committed (next to read).
    pub committed_offset: IntGaugeVec,
}

impl BusMetrics {
    /// Registers the metrics in `registry`. Call once per registry and share the result.
    pub fn register(registry: &Registry) -> Result<Arc<Self>, BusError> {
        let m = Self {
            produced: IntCounterVec::new(Opts::new("lms_bus_produced_records_total", "Records acknowledged by the broker."), &["topic"])?,
            produce_errors: IntCounterVec::new(
                Opts::new("lms_bus_produce_errors_total", "Records that could not be produced."),
                &["topic", "kind"],
            )?,
            consumed: IntCounterVec::new(
                Opts::new("lms_bus_consumed_records_total", "Records fetched by consumer-group members."),
                &["group", "topic"],
            )?,
            processed: IntCounterVec::new(
                Opts::new("lms_bus_processed_events_total", "Events whose batch was processed and made durable."),
                &["group"],
            )?,
            batch_failures: IntCounterVec::new(
                Opts::new("lms_bus_batch_failures_total", "Failed attempts at processing a batch."),
                &["group", "kind"],
            )?,
            dead_lettered: IntCounterVec::new(
                Opts::new("lms_bus_dead_lettered_records_total", "Records sent to the dead-letter topic."),
                &["group", "topic"],
            )?,
            tombstones: IntCounterVec::new(
                Opts::new("lms_bus_tombstones_skipped_total", "Records without a value (tombstones) skipped by consumer-group members."),
                &["group", "topic"],
            )?,
            batch_duration: HistogramVec::new(
                HistogramOpts::new("lms_bus_batch_duration_seconds", "Time from a batch's hand-over to its commit.")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["group"],
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new("lms_bus_consumer_lag_records", "Records between a member's position and the log end."),
                &["group", "topic", "partition"],
            )?,
            committed_offset: IntGaugeVec::new(
                Opts::new("lms_bus_committed_offset", "Next offset to read, as last committed by the group."),
                &["group", "topic", "partition"],
            )?,
        };
        registry.register(Box::new(m.produced.clone()))?;
        registry.register(Box::new(m.produce_errors.clone()))?;
        registry.register(Box::new(m.consumed.clone()))?;
        registry.register(Box::new(m.processed.clone()))?;
        registry.register(Box::new(m.batch_failures.clone()))?;
        registry.register(Box::new(m.dead_lettered.clone()))?;
        registry.register(Box::new(m.tombstones.clone()))?;
        registry.register(Box::new(m.batch_duration.clone()))?;
        registry.register(Box::new(m.consumer_lag.clone()))?;
        registry.register(Box::new(m.committed_offset.clone()))?;
        Ok(Arc::new(m))
    }

    /// Metrics in a registry of their own (tests, tools that export nothing).
    pub fn standalone() -> Arc<Self> {
        Self::register(&Registry::new()).expect("a fresh registry accepts every metric once")
    }
}
