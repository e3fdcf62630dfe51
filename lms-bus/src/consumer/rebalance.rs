//! librdkafka's callbacks for a member: rebalances (with seeks to the stored offsets of
//! offset-store processors), lag metrics from statistics, client errors. They run on the
//! member's thread inside `poll`, where no batch is ever in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Shared, list};
use crate::error::BoxError;
use crate::metrics::BusMetrics;
use crate::processor::OffsetStore;
use crate::record::TopicPartition;

/// The librdkafka context: rebalances (with seeks to stored offsets), lag metrics, errors.
pub(super) struct MemberContext {
    pub(super) group: Arc<str>,
    pub(super) member: Arc<str>,
    pub(super) handle: Handle,
    pub(super) store: Option<Arc<dyn OffsetStore>>,
    pub(super) shared: Arc<Shared>,
    pub(super) metrics: Arc<BusMetrics>,
    pub(super) stop: [CancellationToken; 2],
    pub(super) backoff: (Duration, Duration),
    pub(super) errors: crate::producer::ClientErrors,
}

impl ClientContext for MemberContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" partition.
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&[&*self.group, topic, &p.to_string()]).set(part.consumer_lag);
                }
            }
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::producer::log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.errors.record(&error, reason) {
            warn!(group = %self.group, error = %error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for MemberContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let tps: Vec<TopicPartition> = tpl.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition())).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Some(store) = &self.store {
                    // Exactly-once processors resume where their store says, not where Kafka does.
                    let stored = self.load_offsets_blocking(store, &tps).unwrap_or_default();
                    let mut shared = self.shared.lock();
                    for tp in &tps {
                        let offset = stored.get(tp).copied();
                        let at = offset.map_or(Offset::Beginning, Offset::Offset);
                        if let Err(e) = tpl.set_partition_offset(&tp.topic, tp.partition, at) {
                            error!(group = %self.group, %tp, error = %e, "cannot set the start offset");
                        }
                        shared.expected.insert(tp.clone(), offset);
                    }
                }
                let r = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = r {
                    error!(group = %self.group, error = %e, "assign failed");
                }
                if self.store.is_some() {
                    // Mirror the stored offsets into Kafka so that lag and `lms groups` see
                    // where the group really is (the store stays the source of truth).
                    let mut stored = TopicPartitionList::new();
                    for e in tpl.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            let _ = stored.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
                        }
                    }
                    if stored.count() > 0
                        && let Err(e) = consumer.commit(&stored, CommitMode::Async)
                    {
                        warn!(group = %self.group, error = %e, "mirroring stored offsets to Kafka failed");
                    }
                }
                self.shared.lock().assignment.extend(tps.iter().cloned());
                info!(group = %self.group, member = %self.member, partitions = %list(&tps), "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut shared = self.shared.lock();
                    for tp in &tps {
                        shared.assignment.remove(tp);
                        shared.expected.remove(tp);
                        let _ = self.metrics.consumer_lag.remove_label_values(&[&*self.group, &tp.topic, &tp.partition.to_string()]);
                    }
                    shared.revoked.extend(tps.iter().cloned());
                }
                let r = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    error!(group = %self.group, error = %e, "unassign failed");
                }
                info!(group = %self.group, member = %self.member, partitions = %list(&tps), lost = consumer.assignment_lost(), "partitions revoked");
            }
            other => {
                error!(group = %self.group, error = ?other, "rebalance error");
                if !cooperative {
                    let _ = consumer.unassign();
                }
            }
        }
    }
}

impl MemberContext {
    /// Loads stored offsets from the async store on this (non-runtime) thread, retrying
    /// with back-off until it answers or the member stops.
    fn load_offsets_blocking(&self, store: &Arc<dyn OffsetStore>, tps: &[TopicPartition]) -> Option<HashMap<TopicPartition, i64>> {
        load_offsets_blocking(&self.handle, store, &self.group, tps, &self.stop, self.backoff)
    }
}

pub(super) fn load_offsets_blocking(
    handle: &Handle,
    store: &Arc<dyn OffsetStore>,
    group: &Arc<str>,
    tps: &[TopicPartition],
    stop: &[CancellationToken; 2],
    (initial, max): (Duration, Duration),
) -> Option<HashMap<TopicPartition, i64>> {
    let mut backoff = initial;
    loop {
        if stop.iter().any(CancellationToken::is_cancelled) {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::channel::<Result<HashMap<TopicPartition, i64>, BoxError>>();
        let (store, group2, tps2) = (store.clone(), group.clone(), tps.to_vec());
        handle.spawn(async move {
            let _ = tx.send(store.load_offsets(&group2, &tps2).await);
        });
        match rx.recv() {
            Ok(Ok(offsets)) => return Some(offsets),
            Ok(Err(e)) => {
                warn!(%group, error = %e, backoff_ms = backoff.as_millis() as u64, "cannot load stored offsets; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(max);
            }
            Err(_) => return None,
        }
    }
}
