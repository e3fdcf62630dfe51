//! What every store-backed processor does per batch, in one transaction: advance the
//! stored offsets first (fencing a member that lost the partitions), drop the events of
//! erased learners, apply the batch's effects, put the derived events in the outbox, commit,
//! wake the relay.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use lms_bus::{Batch, OffsetStore, ProcessError, Processor, Record};
use lms_events::{Event, EventData, TraceContext};
use lms_state::{Store, StoreError, Tx, erasure, offsets, outbox};
use tokio::sync::Notify;

/// Derived events with the trace context they continue.
pub type Emitted = Vec<(Event, Option<TraceContext>)>;

/// What a stage did in a batch's transaction.
#[derive(Default)]
pub struct Applied {
    /// Derived events for the outbox, in the same transaction.
    pub emitted: Emitted,
    /// Runs once the transaction committed, never when it failed: counting what was
    /// decided, waking a service that acts on the committed rows.
    pub after_commit: Option<Box<dyn FnOnce() + Send>>,
}

impl From<Emitted> for Applied {
    fn from(emitted: Emitted) -> Self {
        Applied { emitted, after_commit: None }
    }
}

/// Why a stage could not apply a batch.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The store failed (retried when transient, see [`StoreError::is_transient`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The batch's dead letters were not acknowledged (the member is stopping): nothing of
    /// it was committed, and the batch is retried.
    #[error("the batch's dead letters were not acknowledged; nothing committed")]
    DeadLettersPending,
    /// One event cannot be handled (a template that does not render): the batch fails
    /// permanently, and the runner narrows it down to that record and dead-letters it with
    /// this reason.
    #[error("event {event_id}: {reason}")]
    Reject {
        /// The event.
        event_id: String,
        /// Why.
        reason: String,
    },
}

/// The effects of one processor on the store.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    /// Processor name (consumer group `lms-<name>`).
    fn name(&self) -> &'static str;

    /// Cheap per-record check; `Err` dead-letters the record.
    fn check(&self, record: &Record) -> Result<(), String> {
        crate::check_ids(&record.event)
    }

    /// Applies the records' effects in `tx` and returns the events to emit (and what to do
    /// once committed).
    async fn apply(&self, store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Applied, StageError>;
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

    /// The one place a batch's transaction happens: advance the offsets, admit, apply,
    /// outbox, the dead-letter gate, commit, then the stage's after-commit work.
    async fn run(&self, batch: &Batch) -> Result<usize, StageError> {
        let mut cost = crate::cost::Stages::start(self.stage.name());
        let mut tx = self.store.begin().await?;
        offsets::advance(&mut tx, &batch.group, &batch.offsets).await?;
        cost.mark("offsets");
        let records = admitted(&self.store, &mut tx, &batch.records).await?;
        cost.mark("admit");
        let applied = self.stage.apply(&self.store, &mut tx, &records).await?;
        cost.mark("apply");
        outbox::enqueue(&mut tx, &applied.emitted).await?;
        cost.mark("outbox");
        // The offsets may pass poison records: their dead letters first.
        if !batch.dead_letters.acknowledged().await {
            return Err(StageError::DeadLettersPending);
        }
        cost.mark("gate");
        tx.commit().await.map_err(StoreError::from)?;
        cost.mark("commit");
        if let Some(after_commit) = applied.after_commit {
            after_commit();
        }
        Ok(applied.emitted.len())
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
            Err(StageError::Store(e)) => Err(e.into_process_error()),
            Err(e @ StageError::DeadLettersPending) => Err(ProcessError::transient(e)),
            Err(e @ StageError::Reject { .. }) => {
                tracing::warn!(processor = self.stage.name(), error = %e, "an event of the batch cannot be handled");
                Err(ProcessError::permanent(e))
            }
        }
    }

    fn offset_store(&self) -> Option<Arc<dyn OffsetStore>> {
        Some(Arc::new(self.store.clone()))
    }
}

/// The records whose learner is not erased (CONTRACT.md, "Learner data lifecycle"): where
/// events enter processing, in the batch's transaction and under the erasure lock, so an
/// erasure is either seen here or removes what this transaction writes. `learner.erased`
/// records themselves always pass. Borrows `records` when nothing is dropped (the usual case).
///
/// A batch of nothing but erasures (the `erasure` processor's) takes no lock: [`crate::erasure::erase`]
/// takes it exclusively, and two such batches each holding it shared would deadlock.
pub async fn admitted<'r>(store: &Store, tx: &mut Tx, records: &'r [Record]) -> Result<Cow<'r, [Record]>, StoreError> {
    if records.iter().all(|r| matches!(r.event.data, EventData::LearnerErased(_))) {
        return Ok(Cow::Borrowed(records));
    }
    erasure::guard(tx, store.backend()).await?;
    let learners = records
        .iter()
        .filter(|r| !matches!(r.event.data, EventData::LearnerErased(_)))
        .filter_map(|r| r.event.learner_id().map(|l| (r.event.tenant.as_str(), l)));
    let erased = erasure::erased(tx, learners).await?;
    if erased.is_empty() {
        return Ok(Cow::Borrowed(records));
    }
    let is_erased = |r: &Record| {
        !matches!(r.event.data, EventData::LearnerErased(_))
            && r.event.learner_id().is_some_and(|l| erased.contains(&(r.event.tenant.clone(), l.to_owned())))
    };
    let kept: Vec<Record> = records.iter().filter(|r| !is_erased(r)).cloned().collect();
    tracing::debug!(dropped = records.len() - kept.len(), "events of erased learners dropped");
    Ok(Cow::Owned(kept))
}
