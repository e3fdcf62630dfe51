//! The analytics sink: a processor of its own consumer group (`lms-analytics`) that writes
//! every event of every domain to an [`AnalyticsStore`].

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use lms_bus::{Batch, ProcessError, Processor, Record, TopicMap};
use lms_events::{Domain, Event};
use tracing::{debug, warn};

use crate::store::AnalyticsStore;

/// The domains the sink reads: every one with events (not the dead letters).
pub const SINK_DOMAINS: [Domain; 5] =
    [Domain::Learning, Domain::Enrollment, Domain::Payment, Domain::Catalog, Domain::Derived];

/// Writes each batch the runner hands over to the store, in one insert per table.
///
/// Batching by size and time is the runner's (`max_batch_records`, `max_batch_wait_ms`).
/// `process` returns only once the store acknowledged the whole batch, and the runner commits
/// the batch's offsets only after that; a store failure is [`ProcessError::Transient`], so the
/// runner retries the same batch with back-off and commits nothing meanwhile. While it retries
/// it does not poll, so an outage holds at most one batch plus the bounded prefetch in memory.
/// Retried and redelivered batches are harmless: the store is idempotent by event id.
pub struct AnalyticsSink {
    store: Arc<dyn AnalyticsStore>,
}

impl AnalyticsSink {
    /// The processor name, and so the consumer group `lms-analytics`.
    pub const NAME: &'static str = "analytics";

    /// A sink writing to `store`.
    pub fn new(store: Arc<dyn AnalyticsStore>) -> Self {
        Self { store }
    }

    /// The topics the sink subscribes to, from the topic map of the deployment.
    pub fn topics(topics: &TopicMap) -> Vec<String> {
        SINK_DOMAINS.iter().map(|d| topics.topic(*d).to_owned()).collect()
    }
}

#[async_trait]
impl Processor for AnalyticsSink {
    fn name(&self) -> &str {
        Self::NAME
    }

    /// Records that break the events' invariants (written straight to a topic) are
    /// dead-lettered, as by every processor, instead of skewing the rollups.
    fn check(&self, record: &Record) -> Result<(), String> {
        lms_events::invariants::check(&record.event)
    }

    async fn process(&self, batch: &Batch) -> Result<(), ProcessError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        let events: Vec<&Event> = batch.records.iter().map(|r| &r.event).collect();
        let started = Instant::now();
        match self.store.insert(&events).await {
            Ok(()) => {
                debug!(group = %batch.group, events = events.len(), elapsed_ms = started.elapsed().as_millis() as u64, "analytics batch written");
                Ok(())
            }
            Err(error) => {
                // Every store failure is retried: the events are valid (they passed decoding),
                // so a refusal means the store is down or not migrated yet, and dead-lettering
                // valid events would lose them from the analytics for good.
                warn!(group = %batch.group, events = events.len(), %error, store = self.store.kind(), "analytics batch not written; the runner retries it");
                Err(ProcessError::transient(error))
            }
        }
    }
}
