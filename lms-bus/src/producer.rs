//! The producer every component shares: idempotent, `acks=all`, compressed, keyed so one
//! learner's events stay in order, and honest about backpressure.
//!
//! Records are enqueued in order without waiting for each acknowledgement (many in
//! flight, rust-rdkafka #464/#695), then the acknowledgements are awaited together. A full
//! local queue is never hidden: with [`OnQueueFull::Fail`] the call returns
//! [`ProduceError::QueueFull`] for that record and every later one (none of them is
//! enqueued, so order is kept); with [`OnQueueFull::Wait`] it waits for room up to a bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use lms_events::{Event, TraceContext, codec};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::config::KafkaConfig;
use crate::error::{BusError, ProduceError};
use crate::metrics::BusMetrics;
use crate::record::RawRecord;
use crate::topics::TopicMap;
use lms_events::Domain;

/// A record ready to be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: String,
    /// Partitioning key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// What to do when the local producer queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnQueueFull {
    /// Fail at once (request paths: the caller answers 503 and the client retries).
    Fail,
    /// Wait for room, at most this long in total (relays, generators, dead letters).
    Wait(Duration),
}

/// The client context of every librdkafka client: remembers the last client error (a failed
/// TLS handshake, a refused SASL login, a broker down) so readiness can say why the broker
/// is not reachable, and logs each cause once per process and [`ClientErrors::RELOG`], not
/// on every reconnection attempt of every client (librdkafka retries every second or so).
/// Clones share the record, so the producer keeps one beside its client.
#[derive(Clone, Default)]
pub struct ClientErrors {
    last: Arc<Mutex<Option<(String, Instant)>>>,
}

/// When each cause was last logged, for the whole process: an API or a processor has
/// several clients (producer, consumer, admin), all failing for the same reason.
static LOGGED: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

/// What makes two client errors the same cause: the endpoint (`ssl://host:port/id`, the
/// start of librdkafka's reason) and the kind of failure. librdkafka reports one failed
/// TLS handshake twice, as `SSL` and as `BrokerTransportFailure` with different texts.
fn cause_key(error: &KafkaError, reason: &str) -> String {
    let endpoint = reason.split(": ").next().unwrap_or_default();
    let kind = if reason.contains("SSL") || reason.contains("certificate") {
        "tls".to_owned()
    } else if reason.contains("SASL") || reason.contains("uthenticat") {
        "authentication".to_owned()
    } else {
        format!("{:?}", error.rdkafka_error_code())
    };
    format!("{endpoint} {kind}")
}

impl ClientErrors {
    /// How long a cause stays quiet in the log after it was logged.
    pub const RELOG: Duration = Duration::from_secs(300);

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Instant)>> {
        self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last client error, when it is more recent than `within`.
    fn recent(&self, within: Duration) -> Option<String> {
        self.lock().as_ref().filter(|(_, at)| at.elapsed() <= within).map(|(e, _)| e.clone())
    }

    /// The broker answered: forget the last error, and log the next failure at once.
    fn clear(&self) {
        *self.lock() = None;
        LOGGED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }

    /// Remembers a client error; true when it should be logged (its cause was not logged by
    /// this process within [`Self::RELOG`]). `AllBrokersDown` is the summary of the failures
    /// reported before it: neither logged nor kept as the cause.
    pub(crate) fn record(&self, error: &KafkaError, reason: &str) -> bool {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            return false;
        }
        // librdkafka's reason names the broker and the cause (`ssl://host:port/bootstrap:
        // SSL handshake failed: … certificate verify failed`), then varies with each attempt
        // (`(after 7ms in state SSL_HANDSHAKE, 33 identical error(s) suppressed)`).
        let cause = reason.split(" (after ").next().unwrap_or(reason);
        let now = Instant::now();
        let mut last = self.lock();
        // A more specific cause is not replaced by the generic transport failure that
        // librdkafka reports right after it.
        let keep = error.rdkafka_error_code() == Some(RDKafkaErrorCode::BrokerTransportFailure)
            && last.as_ref().is_some_and(|(_, at)| now.duration_since(*at) < Duration::from_secs(60));
        if !keep {
            *last = Some((format!("{cause} [{error}]"), now));
        }
        drop(last);
        let mut logged = LOGGED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let logged = logged.get_or_insert_with(HashMap::new);
        let key = cause_key(error, reason);
        let quiet = logged.get(&key).is_some_and(|at| now.duration_since(*at) < Self::RELOG);
        if !quiet {
            logged.insert(key, now);
        }
        !quiet
    }
}

impl ClientContext for ClientErrors {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.record(&error, reason) {
            tracing::error!(error = %error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ClientErrors {}

/// librdkafka's own log lines, at their level, except its `FAIL` lines: they repeat the
/// client errors that [`ClientErrors`] logs once, so they go to debug.
pub(crate) fn log_librdkafka(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        _ if fac == "FAIL" => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        L::Emerg | L::Alert | L::Critical | L::Error => tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}"),
        L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}"),
        L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
    }
}

/// The shared producer.
pub struct Producer {
    inner: FutureProducer<ClientErrors>,
    errors: ClientErrors,
    topics: TopicMap,
    metrics: Arc<BusMetrics>,
    delivery_timeout: Duration,
}

impl Producer {
    /// Creates the producer (it connects lazily).
    pub fn new(kafka: &KafkaConfig, topics: TopicMap, metrics: Arc<BusMetrics>, client_id: &str) -> Result<Self, BusError> {
        let errors = ClientErrors::default();
        let inner: FutureProducer<ClientErrors> = kafka.producer_config(client_id).create_with_context(errors.clone())?;
        Ok(Self { inner, errors, topics, metrics, delivery_timeout: kafka.delivery_timeout() })
    }

    /// The topic map the producer routes events with.
    pub fn topics(&self) -> &TopicMap {
        &self.topics
    }

    /// The record of an event: its domain's topic, its partition key, the structured
    /// CloudEvents JSON as value, and content type plus W3C trace context as headers.
    pub fn event_record(&self, event: &Event, trace: Option<&TraceContext>) -> OutRecord {
        let mut headers = vec![(codec::headers::CONTENT_TYPE.to_owned(), codec::CONTENT_TYPE.as_bytes().to_vec())];
        if let Some(t) = trace {
            crate::propagation::inject(t, &mut headers);
        }
        OutRecord {
            topic: self.topics.topic(event.domain()).to_owned(),
            key: Some(event.partition_key().as_bytes().to_vec()),
            payload: codec::encode(event),
            headers,
        }
    }

    /// The dead-letter record of a record that could not be processed: the original key,
    /// value and headers, plus the reason and the origin in `lms_dlq_*` headers.
    pub fn dead_letter_record(&self, raw: &RawRecord, group: &str, reason: &str) -> OutRecord {
        use codec::headers as h;
        let mut headers: Vec<(String, Vec<u8>)> = raw.headers.iter().filter(|(k, _)| !k.starts_with("lms_dlq_")).cloned().collect();
        headers.push((h::DLQ_REASON.to_owned(), reason.as_bytes().to_vec()));
        headers.push((h::DLQ_SOURCE_TOPIC.to_owned(), raw.tp.topic.as_bytes().to_vec()));
        headers.push((h::DLQ_SOURCE_PARTITION.to_owned(), raw.tp.partition.to_string().into_bytes()));
        headers.push((h::DLQ_SOURCE_OFFSET.to_owned(), raw.offset.to_string().into_bytes()));
        headers.push((h::DLQ_GROUP.to_owned(), group.as_bytes().to_vec()));
        headers.push((h::DLQ_AT.to_owned(), Utc::now().to_rfc3339().into_bytes()));
        OutRecord {
            topic: self.topics.topic(Domain::DeadLetter).to_owned(),
            key: raw.key.clone(),
            payload: raw.payload.clone().unwrap_or_default(),
            headers,
        }
    }

    /// Produces events (each with its trace context) and waits for every acknowledgement.
    pub async fn send_events(
        &self,
        events: &[(Event, Option<TraceContext>)],
        on_full: OnQueueFull,
    ) -> Vec<Result<Delivered, ProduceError>> {
        let records = events.iter().map(|(e, t)| self.event_record(e, t.as_ref())).collect();
        self.send(records, on_full).await
    }

    /// Produces records in order and waits for every acknowledgement; one result per
    /// record, in order.
    pub async fn send(&self, records: Vec<OutRecord>, on_full: OnQueueFull) -> Vec<Result<Delivered, ProduceError>> {
        self.send_inner(records, on_full, false).await
    }

    /// Produces a tombstone (a record without a value) for each of `keys` to `topic`, in
    /// order, and waits for every acknowledgement: on a compacted topic, compaction then
    /// removes every record of that key, the tombstone last.
    pub async fn send_tombstones(&self, topic: &str, keys: Vec<Vec<u8>>, on_full: OnQueueFull) -> Vec<Result<Delivered, ProduceError>> {
        let records = keys
            .into_iter()
            .map(|k| OutRecord { topic: topic.to_owned(), key: Some(k), payload: Vec::new(), headers: Vec::new() })
            .collect();
        self.send_inner(records, on_full, true).await
    }

    /// Produces `records` (as tombstones: key only, when `tombstones`).
    async fn send_inner(&self, records: Vec<OutRecord>, on_full: OnQueueFull, tombstones: bool) -> Vec<Result<Delivered, ProduceError>> {
        let started = Instant::now();
        let mut pending = Vec::with_capacity(records.len());
        let mut full = false;
        for r in &records {
            if full {
                pending.push(Err(ProduceError::QueueFull));
                continue;
            }
            let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic);
            if !tombstones {
                let headers = r.headers.iter().fold(OwnedHeaders::new_with_capacity(r.headers.len()), |hs, (k, v)| {
                    hs.insert(Header { key: k, value: Some(v.as_slice()) })
                });
                fr = fr.payload(r.payload.as_slice()).headers(headers);
            }
            if let Some(k) = &r.key {
                fr = fr.key(k.as_slice());
            }
            loop {
                match self.inner.send_result(fr) {
                    Ok(f) => {
                        pending.push(Ok(f));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => match on_full {
                        OnQueueFull::Wait(bound) if started.elapsed() < bound => {
                            fr = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        _ => {
                            full = true;
                            pending.push(Err(ProduceError::QueueFull));
                            break;
                        }
                    },
                    Err((e, _)) => {
                        // Anything else (unknown topic, message too large) fails this record only.
                        pending.push(Err(ProduceError::Delivery(e)));
                        break;
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(records.len());
        let futures = pending.into_iter().map(|p| async move {
            match p {
                Err(e) => Err(e),
                Ok(f) => match f.await {
                    Ok(Ok(d)) => Ok(Delivered { partition: d.partition, offset: d.offset }),
                    Ok(Err((e, _))) => Err(ProduceError::Delivery(e)),
                    Err(_) => Err(ProduceError::Delivery(KafkaError::Canceled)),
                },
            }
        });
        out.extend(join_all(futures).await);
        self.count(&records, &out);
        out
    }

    fn count(&self, records: &[OutRecord], results: &[Result<Delivered, ProduceError>]) {
        let mut ok: HashMap<&str, u64> = HashMap::new();
        let mut err: HashMap<(&str, &'static str), u64> = HashMap::new();
        for (r, res) in records.iter().zip(results) {
            match res {
                Ok(_) => *ok.entry(&r.topic).or_default() += 1,
                Err(e) => *err.entry((&r.topic, e.kind())).or_default() += 1,
            }
        }
        for (t, n) in ok {
            self.metrics.produced.with_label_values(&[t]).inc_by(n);
        }
        for ((t, k), n) in err {
            self.metrics.produce_errors.with_label_values(&[t, k]).inc_by(n);
        }
    }

    /// Waits until every enqueued record is acknowledged or failed, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        Ok(self.inner.flush(Timeout::After(timeout))?)
    }

    /// Records still waiting in the local queue or in flight.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }

    /// Connects now and loads `topic`'s metadata (blocking, at most `timeout`), instead of
    /// on the first record: a producer's first send waits for the connection, the
    /// idempotent producer id and the topic's leader (tansu: about 0.6 s). Returns whether
    /// the broker answered.
    pub fn warm_up(&self, topic: &str, timeout: Duration) -> bool {
        self.inner.client().fetch_metadata(Some(topic), timeout).is_ok()
    }

    /// True when the broker answers a metadata request within `timeout` (readiness).
    pub fn broker_reachable(&self, timeout: Duration) -> bool {
        self.broker_check(timeout).is_ok()
    }

    /// Whether the broker answers a metadata request within `timeout` (readiness); if not,
    /// why: librdkafka's last client error of the past minute (it names the endpoint and
    /// the cause, such as a certificate that does not verify or a refused SASL login), or
    /// `unreachable`.
    pub fn broker_check(&self, timeout: Duration) -> Result<(), String> {
        let errors = &self.errors;
        match self.inner.client().fetch_metadata(None, timeout) {
            Ok(m) if !m.brokers().is_empty() => {
                errors.clear();
                Ok(())
            }
            Ok(_) => Err("the cluster lists no broker".to_owned()),
            Err(e) => Err(errors.recent(Duration::from_secs(60)).unwrap_or_else(|| format!("unreachable ({e})"))),
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Dropping a librdkafka producer discards its queue (rust-rdkafka #518): deliver
        // what was accepted first, within the delivery timeout.
        if self.inner.in_flight_count() > 0
            && let Err(e) = self.inner.flush(Timeout::After(self.delivery_timeout))
        {
            tracing::error!(error = %e, in_flight = self.inner.in_flight_count(), "producer dropped with undelivered records");
        }
    }
}
