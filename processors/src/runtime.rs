//! Runs processors: members of their consumer groups plus the outbox relay, sharing one
//! producer (the members have one of their own for dead letters) and one store. Used by
//! `lms processor run`, `lms demo` and the tests.
//!
//! Shutdown order: members first (each finishes its batch and commits), then the
//! processors' services (the notification dispatcher finishes its round), then the relay
//! (a last round, so what the members committed leaves too), then the producer flushes.

use std::sync::Arc;
use std::time::Duration;

use lms_bus::{BusError, BusMetrics, ConsumerConfig, KafkaConfig, Member, MemberConfig, MemberReport, Processor, Producer, TopicMap};
use lms_events::Domain;
use lms_state::outbox::{Relay, RelayConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Check, Context, Registered};

/// Processors running in this process.
pub struct Running {
    members: Vec<(&'static str, Member)>,
    relay: JoinHandle<()>,
    relay_stop: CancellationToken,
    members_stop: CancellationToken,
    /// The processors' background services (the notification dispatcher), by processor.
    services: Vec<(&'static str, JoinHandle<()>, CancellationToken)>,
}

/// What `start` needs besides the processors.
pub struct Plumbing {
    /// Cluster and client settings (with the topic prefix).
    pub kafka: KafkaConfig,
    /// Batching and retries of the members.
    pub consumer: ConsumerConfig,
    /// Topic names.
    pub topics: TopicMap,
    /// The shared producer (outbox relay, notification dispatcher). Dead letters get a
    /// producer of their own, made by [`start`].
    pub producer: Arc<Producer>,
    /// Metrics of the bus.
    pub metrics: Arc<BusMetrics>,
}

/// A relay for `store` and the context components are built from, with no extensions yet:
/// put the configuration sections in, then [`prepare`].
pub fn context(store: lms_state::Store, producer: Arc<Producer>) -> (Context, Relay) {
    let relay = Relay::new(store.clone(), producer, RelayConfig::default());
    (Context { store, relay: relay.waker(), extensions: http::Extensions::new() }, relay)
}

/// Runs the `prepare` of each of `processors` once (two registered processors sharing a
/// component share it) and returns their readiness checks.
pub async fn prepare(ctx: &mut Context, processors: &[&'static Registered]) -> Result<Vec<Check>, String> {
    let mut done: Vec<crate::Prepare> = Vec::new();
    let mut checks = Vec::new();
    for reg in processors {
        let Some(prepare) = reg.prepare else { continue };
        if done.iter().any(|p| std::ptr::fn_addr_eq(*p, prepare)) {
            continue;
        }
        done.push(prepare);
        checks.extend(prepare(ctx).await.map_err(|e| format!("processor {}: {e}", reg.name))?);
    }
    Ok(checks)
}

/// Starts `instances` members of each processor and the relay.
pub fn start(
    plumbing: &Plumbing,
    ctx: &Context,
    relay: Relay,
    processors: &[&'static Registered],
    instances: usize,
) -> Result<Running, BusError> {
    // Build every instance before starting anything, so a processor the context cannot
    // serve fails the start cleanly instead of after its siblings joined their groups.
    let mut built = Vec::new();
    for reg in processors {
        for i in 0..instances.max(1) {
            let processor = (reg.build)(ctx).map_err(|e| BusError::Member(format!("processor {}: {e}", reg.name)))?;
            built.push((*reg, i, processor));
        }
    }
    // The services next, still before any member joins: one that cannot start (what it
    // needs is missing from the context) fails the start with the reason.
    let mut services = Vec::new();
    for reg in processors {
        let Some(start) = reg.service else { continue };
        let stop = CancellationToken::new();
        match start(ctx, plumbing, stop.clone()) {
            Ok(task) => services.push((reg.name, task, stop)),
            Err(e) => {
                cancel(&services);
                return Err(BusError::Member(format!("processor {}: {e}", reg.name)));
            }
        }
    }
    match start_members(plumbing, relay, built) {
        Ok(running) => Ok(Running { services, ..running }),
        Err(e) => {
            // Nothing started is left running behind the error.
            cancel(&services);
            Err(e)
        }
    }
}

type Services = [(&'static str, JoinHandle<()>, CancellationToken)];

fn cancel(services: &Services) {
    for (_, _, stop) in services {
        stop.cancel();
    }
}

/// The dead-letter producer, the relay and the members of `built` (without services); on an
/// error, what was started is stopped again.
fn start_members(
    plumbing: &Plumbing,
    relay: Relay,
    built: Vec<(&'static Registered, usize, Arc<dyn Processor>)>,
) -> Result<Running, BusError> {
    // A batch with poison in it commits only once its dead letters are acknowledged. On the
    // relay's producer they would queue behind the outbox backlog (librdkafka sends a
    // connection's partitions in turn, at most 5 requests in flight), and every such batch
    // would wait for it: with 1 % poison that cost 37 % of the valid events' rate over a
    // 1.1 M-record backlog. Their own producer keeps that wait at one round trip.
    let dead_letters = Arc::new(Producer::new(
        &plumbing.kafka,
        plumbing.topics.clone(),
        Arc::clone(&plumbing.metrics),
        &format!("lms-dead-letters-{}", std::process::id()),
    )?);
    // Connected while the members join their groups, so the first batch with poison in it
    // does not wait for the connection (it cost 0.6 s, a fifth of a 3 s benchmark run).
    {
        let (producer, topic) = (Arc::clone(&dead_letters), plumbing.topics.topic(Domain::DeadLetter).to_owned());
        tokio::task::spawn_blocking(move || {
            if !producer.warm_up(&topic, Duration::from_secs(10)) {
                tracing::warn!(%topic, "the dead-letter producer could not reach the broker yet; it keeps trying on its first record");
            }
        });
    }
    let members_stop = CancellationToken::new();
    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn(relay.run(relay_stop.clone()));
    let mut members = Vec::new();
    for (reg, i, processor) in built {
        let config = MemberConfig {
            kafka: plumbing.kafka.clone(),
            consumer: plumbing.consumer.clone(),
            group_id: plumbing.kafka.group_id(reg.name),
            topics: reg.domains.iter().map(|d| plumbing.topics.topic(*d).to_owned()).collect(),
            client_id: format!("lms-{}-{}-{i}", reg.name, std::process::id()),
        };
        match Member::spawn(config, processor, Arc::clone(&dead_letters), Arc::clone(&plumbing.metrics), members_stop.clone()) {
            Ok(member) => members.push((reg.name, member)),
            Err(e) => {
                members_stop.cancel();
                relay_stop.cancel();
                return Err(e);
            }
        }
    }
    Ok(Running { members, relay, relay_stop, members_stop, services: Vec::new() })
}

impl Running {
    /// Members and the processor each runs.
    pub fn members(&self) -> impl Iterator<Item = (&'static str, &Member)> {
        self.members.iter().map(|(n, m)| (*n, m))
    }

    /// Stops gracefully (see the module doc) and reports what each member did.
    pub async fn stop(self) -> Result<Vec<(&'static str, MemberReport)>, BusError> {
        self.members_stop.cancel();
        let mut reports = Vec::new();
        let mut first_error = None;
        for (name, m) in self.members {
            match m.join().await {
                Ok(r) => reports.push((name, r)),
                Err(e) => {
                    tracing::error!(processor = name, error = %e, "member failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        for (name, task, stop) in self.services {
            stop.cancel();
            if task.await.is_err() {
                tracing::error!(processor = name, "a processor's service task panicked");
            }
        }
        self.relay_stop.cancel();
        if self.relay.await.is_err() {
            tracing::error!("outbox relay task panicked");
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }
}
