//! The analytics sink: a processor of its own consumer group (`lms-analytics`) that writes
//! every event of every domain to an [`AnalyticsStore`].

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use lms_bus::{Batch, ProcessError, Processor, Record, TopicMap};
use std::collections::HashSet;

use lms_events::{Domain, Event, EventData};
use tracing::{debug, warn};

use crate::store::{AnalyticsStore, StoreError};

/// The domains the sink reads: every one with events (not the dead letters), the erasures
/// included.
pub const SINK_DOMAINS: [Domain; 6] =
    [Domain::Learning, Domain::Enrollment, Domain::Payment, Domain::Catalog, Domain::Derived, Domain::Erasure];

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
        let started = Instant::now();
        match self.write(batch).await {
            Ok(written) => {
                debug!(group = %batch.group, events = written, elapsed_ms = started.elapsed().as_millis() as u64, "analytics batch written");
                Ok(())
            }
            Err(error) => {
                // Every store failure is retried: the events are valid (they passed decoding),
                // so a refusal means the store is down or not migrated yet, and dead-lettering
                // valid events would lose them from the analytics for good.
                warn!(group = %batch.group, events = batch.records.len(), %error, store = self.store.kind(), "analytics batch not written; the runner retries it");
                Err(ProcessError::transient(error))
            }
        }
    }
}

impl AnalyticsSink {
    /// Applies the batch's erasures, drops the events of erased learners (CONTRACT.md,
    /// "Learner data lifecycle"), writes the rest; returns how many events were written.
    ///
    /// An erasure may commit between the check and the write: the check after the write
    /// sees it (the store records an erasure before it removes rows, so either the removal
    /// began after this write or the check sees the record) and erases again.
    async fn write(&self, batch: &Batch) -> Result<usize, StoreError> {
        let mut events: Vec<&Event> = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            match &r.event.data {
                EventData::LearnerErased(d) => {
                    self.store.erase(&r.event.tenant, &d.learner_id).await?;
                }
                _ => events.push(&r.event),
            }
        }
        let learners: Vec<(&str, &str)> = events.iter().filter_map(|e| e.learner_id().map(|l| (e.tenant.as_str(), l))).collect();
        let erased = if learners.is_empty() { HashSet::new() } else { self.store.erased(&learners).await? };
        let anonymous: Vec<Event>;
        if !erased.is_empty() {
            let is_erased = |e: &Event| e.learner_id().is_some_and(|l| erased.contains(&(e.tenant.clone(), l.to_owned())));
            // An erased learner's payments stay, without the learner: revenue keeps its totals.
            anonymous = events.iter().filter(|e| is_erased(e)).filter_map(|e| anonymized_payment(e)).collect();
            events.retain(|e| !is_erased(e));
            events.extend(anonymous.iter());
        }
        self.store.insert(&events).await?;
        if !learners.is_empty() {
            let now = self.store.erased(&learners).await?;
            for (tenant, learner) in now.difference(&erased) {
                self.store.erase(tenant, learner).await?;
            }
        }
        Ok(events.len())
    }
}

/// A payment event of an erased learner as the analytics keep it, without the learner
/// (other events: `None`): revenue keeps its totals. The oracles use it too.
pub fn anonymized_payment(e: &Event) -> Option<Event> {
    let mut e = e.clone();
    match &mut e.data {
        EventData::PaymentSucceeded(d) => d.learner_id.clear(),
        EventData::PaymentFailed(d) => d.learner_id.clear(),
        _ => return None,
    }
    e.subject = None;
    Some(e)
}
