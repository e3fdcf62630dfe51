//! The Kafka bus every lms-pipeline component shares.
//!
//! - [`Producer`]: idempotent, `acks=all`, compressed; events keyed by learner (course for
//!   the catalog, payment for payments); queue-full surfaced as backpressure.
//! - [`Member`]: one member of a consumer group running a [`Processor`] batch by batch,
//!   with dead letters, retries, and offsets committed only after effects are durable
//!   (see the `consumer` module for the exact order and its invariants).
//! - [`topics`]: topics.yaml and the idempotent `plan`/`apply`.
//! - [`BusMetrics`]: Prometheus metrics, counted per batch.
//! - [`admin`]: operator tools: consumer groups and lag, replays, dead letters.

pub mod admin;
mod config;
mod consumer;
mod error;
mod metrics;
pub mod otel;
mod processor;
mod producer;
pub mod propagation;
mod record;
mod secret;
pub mod topics;

pub use config::{ConsumerConfig, KafkaConfig, KafkaSecurity, SaslConfig, SaslMechanism, SecurityConfigError, SecurityProtocol};
pub use consumer::{Member, MemberConfig, MemberReport};
pub use error::{BoxError, BusError, ProcessError, ProduceError};
pub use metrics::BusMetrics;
pub use processor::{OffsetStore, Processor};
pub use producer::{Delivered, OnQueueFull, OutRecord, Producer};
pub use record::{Batch, DeadLetters, PartitionOffsets, RawRecord, Record, TopicPartition};
pub use secret::{REDACTED, Secret, SecretFileError, trim_line_break};
pub use topics::{TopicMap, TopicsFile};
