//! Configuration of the Kafka clients. Every option name carries its unit.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::secret::{REDACTED, Secret};

/// How to reach the Kafka cluster and how to produce to it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port` pairs.
    pub brokers: String,
    /// Put before every topic name of topics.yaml and every consumer group id. It keeps
    /// test runs, or several pipelines on one cluster, apart. Empty in production.
    #[serde(default)]
    pub topic_prefix: String,
    /// Compression codec of produced batches: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// How long a produced record may take to be acknowledged (`acks=all`) before its
    /// delivery fails (librdkafka `message.timeout.ms`).
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Records the producer may hold in its local queue; beyond it sends fail fast with
    /// a queue-full error that callers surface as backpressure.
    #[serde(default = "default_queue_max_records")]
    pub queue_max_records: u32,
    /// TLS and SASL: how every client of this process (producers, consumer-group members,
    /// admin tools) authenticates the brokers and itself.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// Extra librdkafka properties (for example `ssl.endpoint.identification.algorithm`),
    /// applied last so they override everything above, `security` included.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Property values whose key names a secret are not printed.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> =
            self.properties.iter().map(|(k, v)| (k.as_str(), if is_secret_property(k) { REDACTED } else { v.as_str() })).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("compression", &self.compression)
            .field("delivery_timeout_ms", &self.delivery_timeout_ms)
            .field("linger_ms", &self.linger_ms)
            .field("queue_max_records", &self.queue_max_records)
            .field("security", &self.security)
            .field("properties", &properties)
            .finish()
    }
}

/// librdkafka properties that hold secrets (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `ssl.key.pem`, ...).
fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.ends_with(".pem") || k.contains("jaas")
}

/// The `kafka.security` section: transport security and authentication.
///
/// Mapped onto librdkafka by [`KafkaConfig`]'s client configurations (`security.protocol`,
/// `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`,
/// `ssl.certificate.location`, `ssl.key.location`); `kafka.properties` still come last. The
/// brokers' host names are checked against their certificates (librdkafka's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `plaintext` (the default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// SASL mechanism and credentials; required by the `sasl_*` protocols, refused otherwise.
    pub sasl: Option<SaslConfig>,
    /// PEM file of the certificate authorities that sign the brokers' certificates; the
    /// system's trust store when absent. `ssl` and `sasl_ssl` only.
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate (mutual TLS), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the private key of `cert_file` (unencrypted).
    pub key_file: Option<PathBuf>,
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS; the client authenticates with a certificate if `cert_file` is set.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS: what hosted Kafka services ask for.
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// SASL mechanism and credentials. GSSAPI (Kerberos) and OAUTHBEARER are not offered: this
/// build of librdkafka has no libsasl2, and no token provider is wired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password; in a file, `password_file` (read by the binary at startup).
    pub password: Secret,
}

/// librdkafka's `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// User name and password in clear: only over TLS.
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A `kafka.security` section that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityConfigError {
    /// A `sasl_*` protocol without credentials.
    #[error("kafka.security.protocol {0} needs a kafka.security.sasl section (mechanism, username, password)")]
    SaslMissing(&'static str),
    /// Credentials with a protocol that does not use them.
    #[error("kafka.security.sasl is set but kafka.security.protocol {0} does not use SASL (sasl_plaintext or sasl_ssl)")]
    SaslUnused(&'static str),
    /// TLS files with a protocol without TLS.
    #[error("kafka.security.{0} is set but kafka.security.protocol {1} does not use TLS (ssl or sasl_ssl)")]
    TlsUnused(&'static str, &'static str),
    /// Half of a client certificate.
    #[error("kafka.security.cert_file and kafka.security.key_file go together")]
    HalfCertificate,
}

impl KafkaSecurity {
    /// Checks that the section can work; the binary refuses to start otherwise.
    pub fn validate(&self) -> Result<(), SecurityConfigError> {
        let p = self.protocol;
        match (&self.sasl, p.sasl()) {
            (None, true) => return Err(SecurityConfigError::SaslMissing(p.as_str())),
            (Some(_), false) => return Err(SecurityConfigError::SaslUnused(p.as_str())),
            _ => {}
        }
        if !p.tls() {
            for (name, set) in
                [("ca_file", self.ca_file.is_some()), ("cert_file", self.cert_file.is_some()), ("key_file", self.key_file.is_some())]
            {
                if set {
                    return Err(SecurityConfigError::TlsUnused(name, p.as_str()));
                }
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(SecurityConfigError::HalfCertificate);
        }
        Ok(())
    }

    /// Sets the librdkafka properties of this section on `c`.
    fn apply(&self, c: &mut ClientConfig) {
        let p = self.protocol;
        c.set("security.protocol", p.as_str());
        if p.tls() {
            for (key, file) in
                [("ssl.ca.location", &self.ca_file), ("ssl.certificate.location", &self.cert_file), ("ssl.key.location", &self.key_file)]
            {
                if let Some(f) = file {
                    c.set(key, f.to_string_lossy());
                }
            }
        }
        if let (true, Some(sasl)) = (p.sasl(), &self.sasl) {
            c.set("sasl.mechanism", sasl.mechanism.as_str())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", sasl.password.expose());
        }
    }
}

fn default_compression() -> String {
    "lz4".to_owned()
}
fn default_delivery_timeout_ms() -> u64 {
    30_000
}
fn default_linger_ms() -> u64 {
    5
}
fn default_queue_max_records() -> u32 {
    200_000
}

impl KafkaConfig {
    /// A configuration with defaults for everything but the brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: String::new(),
            compression: default_compression(),
            delivery_timeout_ms: default_delivery_timeout_ms(),
            linger_ms: default_linger_ms(),
            queue_max_records: default_queue_max_records(),
            security: KafkaSecurity::default(),
            properties: BTreeMap::new(),
        }
    }

    /// Sets the topic and group prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// The consumer group id of a processor: the prefix, then `lms-<processor>`.
    pub fn group_id(&self, processor: &str) -> String {
        format!("{}lms-{}", self.topic_prefix, processor)
    }

    /// Properties shared by every client, `security` included. Every client of the
    /// workspace starts from here (producers, members, admin tools), so TLS and SASL reach
    /// them all.
    pub(crate) fn base(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            // Metadata of auto-created topics (the mock cluster, tests) shows up sooner.
            .set("topic.metadata.refresh.interval.ms", "10000");
        self.security.apply(&mut c);
        c
    }

    /// A plain client configuration for this cluster (bootstrap servers, security, the
    /// user's properties), for tools and tests that build their own clients.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        self.finish(self.base(client_id))
    }

    /// Applies the user's extra properties last.
    pub(crate) fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The producer configuration: idempotent, `acks=all`, compressed, bounded queue.
    pub fn producer_config(&self, client_id: &str) -> ClientConfig {
        let mut c = self.base(client_id);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .set("queue.buffering.max.messages", self.queue_max_records.to_string());
        self.finish(c)
    }

    /// The delivery timeout as a duration.
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }
}

/// How a consumer-group member fetches and batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Most records handed to a processor in one batch.
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    /// Longest wait for a batch to fill once its first record arrived.
    #[serde(default = "default_max_batch_wait_ms")]
    pub max_batch_wait_ms: u64,
    /// Member is considered failed when it sends no heartbeat for this long.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Longest time between two polls before the member leaves the group. Processing a
    /// batch, retries included, must fit in it; a store outage longer than this makes the
    /// member leave and rejoin, which is safe but slow.
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// Bound on prefetched data per member (librdkafka `queued.max.messages.kbytes`): what
    /// memory a paused or slow processor can use for records not yet processed.
    #[serde(default = "default_prefetch_max_kbytes")]
    pub prefetch_max_kbytes: u64,
    /// First back-off after a transient processing error; it doubles up to the maximum.
    #[serde(default = "default_retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    /// Longest back-off between two attempts at a batch.
    #[serde(default = "default_retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// How often librdkafka reports statistics, from which consumer lag is exported.
    #[serde(default = "default_statistics_interval_ms")]
    pub statistics_interval_ms: u64,
    /// Longest time the broker may hold a fetch waiting for new records (librdkafka
    /// `fetch.wait.max.ms`, whose default this keeps). It is a floor under end-to-end
    /// freshness on tansu 0.6.0, which sleeps out the rest of the wait after every fetch, data
    /// or not (`loadtest soak` at 500 events/s: p50 459 ms with 500, 105 ms with 50). Lower it
    /// for freshness on the memory engine; on tansu's SQLite engine values under 500 left a
    /// member that took partitions over without records (tests/it/bus_takeover.rs).
    #[serde(default = "default_fetch_wait_max_ms")]
    pub fetch_wait_max_ms: u64,
}

fn default_max_batch_records() -> usize {
    2_000
}
fn default_max_batch_wait_ms() -> u64 {
    100
}
fn default_session_timeout_ms() -> u64 {
    10_000
}
fn default_max_poll_interval_ms() -> u64 {
    300_000
}
fn default_prefetch_max_kbytes() -> u64 {
    32 * 1024
}
fn default_retry_initial_backoff_ms() -> u64 {
    100
}
fn default_retry_max_backoff_ms() -> u64 {
    10_000
}
fn default_statistics_interval_ms() -> u64 {
    5_000
}
fn default_fetch_wait_max_ms() -> u64 {
    500
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_batch_records: default_max_batch_records(),
            max_batch_wait_ms: default_max_batch_wait_ms(),
            session_timeout_ms: default_session_timeout_ms(),
            max_poll_interval_ms: default_max_poll_interval_ms(),
            prefetch_max_kbytes: default_prefetch_max_kbytes(),
            retry_initial_backoff_ms: default_retry_initial_backoff_ms(),
            retry_max_backoff_ms: default_retry_max_backoff_ms(),
            statistics_interval_ms: default_statistics_interval_ms(),
            fetch_wait_max_ms: default_fetch_wait_max_ms(),
        }
    }
}

impl ConsumerConfig {
    /// The librdkafka configuration of one group member.
    pub(crate) fn client_config(&self, kafka: &KafkaConfig, group_id: &str, client_id: &str) -> ClientConfig {
        let mut c = kafka.base(client_id);
        c.set("group.id", group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Offsets are committed by the runner, explicitly, after a batch's effects are
            // durable; never by a timer and never from the consumed position.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (self.session_timeout_ms / 3).max(100).to_string())
            .set("max.poll.interval.ms", self.max_poll_interval_ms.to_string())
            .set("queued.max.messages.kbytes", self.prefetch_max_kbytes.to_string())
            .set("statistics.interval.ms", self.statistics_interval_ms.to_string())
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string());
        kafka.finish(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secure() -> KafkaConfig {
        let mut k = KafkaConfig::new("b1:9093,b2:9093");
        k.security = KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl: Some(SaslConfig { mechanism: SaslMechanism::ScramSha512, username: "lms".into(), password: Secret::new("hunter2") }),
            ca_file: Some("/etc/lms/ca.pem".into()),
            cert_file: None,
            key_file: None,
        };
        k
    }

    /// The README's worked configuration, as YAML, reaches librdkafka's property names.
    #[test]
    fn security_maps_onto_librdkafka_for_every_client() {
        let k: KafkaConfig = serde_yaml::from_str(
            "brokers: b1:9093\nsecurity:\n  protocol: sasl_ssl\n  ca_file: /etc/lms/ca.pem\n  sasl: { mechanism: SCRAM-SHA-512, username: lms, password: hunter2 }\n",
        )
        .expect("valid");
        k.security.validate().expect("consistent");
        let consumer = ConsumerConfig::default();
        for c in [k.producer_config("p"), consumer.client_config(&k, "g", "m"), k.client_config("admin")] {
            assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(c.get("sasl.username"), Some("lms"));
            assert_eq!(c.get("sasl.password"), Some("hunter2"));
            assert_eq!(c.get("ssl.ca.location"), Some("/etc/lms/ca.pem"));
            assert_eq!(c.get("ssl.certificate.location"), None);
        }
        let plain = KafkaConfig::new("b:9092").producer_config("p");
        assert_eq!(plain.get("security.protocol"), Some("plaintext"));
        assert_eq!(plain.get("sasl.username"), None);
    }

    #[test]
    fn mutual_tls_and_every_mechanism() {
        let mut k = KafkaConfig::new("b:9093");
        k.security = KafkaSecurity {
            protocol: SecurityProtocol::Ssl,
            sasl: None,
            ca_file: Some("ca.pem".into()),
            cert_file: Some("client.pem".into()),
            key_file: Some("client.key".into()),
        };
        k.security.validate().expect("consistent");
        let c = k.client_config("x");
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        assert_eq!(c.get("ssl.certificate.location"), Some("client.pem"));
        assert_eq!(c.get("ssl.key.location"), Some("client.key"));
        assert_eq!(c.get("sasl.mechanism"), None);
        for (yaml, m) in [("PLAIN", "PLAIN"), ("SCRAM-SHA-256", "SCRAM-SHA-256"), ("SCRAM-SHA-512", "SCRAM-SHA-512")] {
            let parsed: SaslMechanism = serde_yaml::from_str(yaml).expect("a mechanism");
            assert_eq!(parsed.as_str(), m);
        }
        assert!(serde_yaml::from_str::<SaslMechanism>("GSSAPI").is_err(), "not built");
    }

    #[test]
    fn properties_still_come_last() {
        let mut k = secure();
        k.properties.insert("security.protocol".into(), "sasl_plaintext".into());
        k.properties.insert("ssl.endpoint.identification.algorithm".into(), "none".into());
        let c = k.producer_config("p");
        assert_eq!(c.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(c.get("ssl.endpoint.identification.algorithm"), Some("none"));
    }

    #[test]
    fn inconsistent_sections_are_refused() {
        let sasl = secure().security.sasl;
        let cases = [
            (KafkaSecurity { protocol: SecurityProtocol::SaslSsl, ..Default::default() }, "needs a kafka.security.sasl"),
            (KafkaSecurity { protocol: SecurityProtocol::Ssl, sasl: sasl.clone(), ..Default::default() }, "does not use SASL"),
            (KafkaSecurity { ca_file: Some("ca.pem".into()), ..Default::default() }, "ca_file is set"),
            (KafkaSecurity { protocol: SecurityProtocol::Ssl, cert_file: Some("c.pem".into()), ..Default::default() }, "go together"),
        ];
        for (s, expected) in cases {
            let err = s.validate().expect_err("inconsistent").to_string();
            assert!(err.contains(expected), "{err}");
        }
        assert!(KafkaSecurity::default().validate().is_ok());
    }

    #[test]
    fn secrets_are_not_printed_nor_dumped() {
        let mut k = secure();
        k.properties.insert("ssl.key.password".into(), "keypass".into());
        k.properties.insert("linger.ms".into(), "7".into());
        let shown = format!("{k:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("keypass"), "{shown}");
        assert!(shown.contains("linger.ms") && shown.contains("\"7\"") && shown.contains("lms"), "{shown}");
        let dumped = serde_yaml::to_string(&k.security).expect("serialise");
        assert!(!dumped.contains("hunter2") && dumped.contains("<redacted>"), "{dumped}");
    }
}
