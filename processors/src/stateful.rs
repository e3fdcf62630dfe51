//! What every store-backed processor does per batch, in one transaction: advance the
//! stored offsets first (fencing a member that lost the partitions), apply the batch's
//! effects, put the derived events in the outbox, commit, wake the relay.

use std::sync::Arc;

use async_trait::async_trait;
use lms_bus::{Batch, OffsetStore, ProcessError, Processor, Record};
use lms_events::{Event, TraceContext};
use lms_store::{Store, StoreError, Tx, offsets, outbox};
use tokio::sync::Notify;

/// Derived events with the trace context they continue.
pub type Emitted = Vec<(Event, Option<TraceContext>)>;

/// The effects of one processor on the store.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    /// Processor name (consumer group `lms-<name>`).
    fn name(&self) -> &'static str;

    /// Cheap per-record check; `Err` dead-letters the record.
    fn check(&self, record: &Record) -> Result<(), String> {
        crate::check_ids(&record.event)
    }

    /// Applies the records' effects in `tx` and returns the events to emit.
    async fn apply(&self, store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Emitted, StoreError>;
}

/// A [`Stage`] run as an exactly-once processor.
pub struct Stateful<S> {
    store: Store,
    relay: Arc<Notify>,
    stage: S,
}

impl<S: Stage> Stateful<S> {
    /// `stage` on `store`; `relay` is woken after each commit that emitted events.
    pub fn new(store: Store, relay: Arc<Notify>, stage: S) -> Self {
        Self { store, relay, stage }
    }

    async fn run(&self, batch: &Batch) -> Result<usize, StoreError> {
        let mut tx = self.store.begin().await?;
        offsets::advance(&mut tx, &batch.group, &batch.offsets).await?;
        let events = self.stage.apply(&self.store, &mut tx, &batch.records).await?;
        outbox::enqueue(&mut tx, &events).await?;
        // The offsets may pass poison records: their dead letters first.
        if !batch.dead_letters.acknowledged().await {
            return Err(StoreError::DeadLettersPending);
        }
        tx.commit().await?;
        Ok(events.len())
    }
}

#[async_trait]
impl<S: Stage> Processor for Stateful<S> {
    fn name(&self) -> &str {
        self.stage.name()
    }

    fn check(&self, record: &Record) -> Result<(), String> {
        self.stage.check(record)
    }

    async fn process(&self, batch: &Batch) -> Result<(), ProcessError> {
        match self.run(batch).await {
            Ok(emitted) => {
                if emitted > 0 {
                    self.relay.notify_one();
                }
                Ok(())
            }
            Err(e) => Err(e.into_process_error()),
        }
    }

    fn offset_store(&self) -> Option<Arc<dyn OffsetStore>> {
        Some(Arc::new(self.store.clone()))
    }
}
