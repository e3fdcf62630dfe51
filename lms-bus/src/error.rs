//! Errors of the bus, and the error a processor returns for a batch.

use rdkafka::error::KafkaError;

/// Any error a processor's store or a component may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Failures of the bus itself (clients, topics, metrics, threads).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// topics.yaml is invalid or the cluster refused a topic change.
    #[error("topics: {0}")]
    Topics(String),
    /// A metric could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A consumer-group member's thread failed.
    #[error("consumer member: {0}")]
    Member(String),
}

/// What went wrong with a batch, and so what the runner does next.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A dependency is unavailable (store down, timeout): the runner retries the same
    /// batch with exponential back-off and commits nothing meanwhile.
    #[error("transient failure, will retry: {0}")]
    Transient(#[source] BoxError),
    /// Something in the batch can never be processed: the runner splits the batch to
    /// isolate the record(s) responsible and dead-letters them with this reason.
    #[error("permanent failure: {0}")]
    Permanent(#[source] BoxError),
    /// The offsets the batch expected were no longer the stored ones: another member
    /// processed these partitions meanwhile. The runner discards the batch and re-seeks
    /// to the stored offsets; nothing was applied.
    #[error("fenced by another member: {0}")]
    Fenced(String),
}

impl ProcessError {
    /// Wraps an error as transient.
    pub fn transient(e: impl Into<BoxError>) -> Self {
        Self::Transient(e.into())
    }
    /// Wraps an error as permanent.
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        Self::Permanent(e.into())
    }
}

/// Why a record could not be produced.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// The local producer queue is full: the caller should slow down (HTTP 503 with
    /// `Retry-After` at the API). Nothing was enqueued.
    #[error("the producer queue is full")]
    QueueFull,
    /// The broker did not acknowledge the record within the delivery timeout, or
    /// refused it.
    #[error("delivery failed: {0}")]
    Delivery(KafkaError),
}

impl ProduceError {
    /// A stable, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Delivery(_) => "delivery",
        }
    }
}
