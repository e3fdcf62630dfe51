//! The contract between the consumer-group runner and a processor.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{BoxError, ProcessError};
use crate::record::{Batch, Record, TopicPartition};

/// A stream processor: typed events in, durable effects out.
///
/// The runner calls [`Processor::check`] for every decoded record (a failure dead-letters
/// that record), then [`Processor::process`] once per batch. `process` must return `Ok`
/// only once the batch's effects are durable; the runner commits offsets after that and
/// never before. Effects must be idempotent by event id (records are delivered at least
/// once), unless the processor keeps offsets in its own store ([`Processor::offset_store`]),
/// which makes them exactly once.
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    /// Stable name, used in the consumer group id, logs and metrics.
    fn name(&self) -> &str;

    /// Cheap, stateless check of one record; `Err(reason)` sends it to the dead-letter
    /// topic before the batch is processed.
    fn check(&self, _record: &Record) -> Result<(), String> {
        Ok(())
    }

    /// Applies a batch. See [`ProcessError`] for what each failure makes the runner do.
    async fn process(&self, batch: &Batch) -> Result<(), ProcessError>;

    /// Where offsets live when they are written in the same transaction as the effects.
    /// `None` (the default): offsets are committed to Kafka after `process` returns.
    fn offset_store(&self) -> Option<Arc<dyn OffsetStore>> {
        None
    }
}

/// Offsets kept in a processor's own store, atomically with its effects.
///
/// On assignment the runner seeks each partition to the stored offset (or to the
/// beginning when none is stored); every batch then carries the offsets it expects to
/// find stored ([`crate::PartitionOffsets::expected`]), and the store advances them in
/// the transaction of the batch's effects only if they still match.
#[async_trait]
pub trait OffsetStore: Send + Sync + 'static {
    /// Next offsets to read of `partitions` for `group`; absent partitions have none stored.
    async fn load_offsets(&self, group: &str, partitions: &[TopicPartition]) -> Result<HashMap<TopicPartition, i64>, BoxError>;
}
