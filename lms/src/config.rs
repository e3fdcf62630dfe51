//! Configuration: defaults, then a YAML file (`--config`), then `LMS_<SECTION>__<KEY>`
//! environment variables (for example `LMS_KAFKA__BROKERS=kafka:9092`).

use std::path::Path;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use lms_bus::{ConsumerConfig, KafkaConfig};
use serde::{Deserialize, Serialize};

/// Sections of the configuration; environment variables outside them are ignored.
const SECTIONS: &[&str] = &["kafka", "consumer", "store", "notifications", "api", "analytics"];

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Kafka cluster and the producer.
    pub kafka: KafkaConfig,
    /// Consumer-group members of the processors.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// The processors' state store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The notifications processor and its dispatcher (SMTP, webhooks, throttle, digests).
    #[serde(default)]
    pub notifications: processors::notifications::NotifyConfig,
    /// The HTTP services (`lms api`); the JWT secret comes from `LMS_JWT_SECRET`.
    #[serde(default)]
    pub api: api::ApiConfig,
    /// The analytics store: `store: clickhouse` (with `url`, `database`, ...) or
    /// `store: parquet` (with `dir`, the embedded twin). Absent: the twin in
    /// `lms-data/analytics` (see [`Config::analytics`]). No default is merged in, so that the
    /// file or the environment can choose either store without leftover fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analytics: Option<lms_analytics::AnalyticsConfig>,
}

/// The processors' state store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user:password@host/db` (production) or `sqlite://<path>` (one process).
    pub url: String,
    /// Connections per process (PostgreSQL; SQLite always uses one).
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { url: "sqlite://lms-data/state.db".to_owned(), max_connections: 8 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::new("127.0.0.1:9092"),
            consumer: ConsumerConfig::default(),
            store: StoreConfig::default(),
            notifications: processors::notifications::NotifyConfig::default(),
            api: api::ApiConfig::default(),
            analytics: None,
        }
    }
}

impl Config {
    /// The analytics store to use: the configured one, else the twin in `lms-data/analytics`.
    pub fn analytics(&self) -> lms_analytics::AnalyticsConfig {
        self.analytics
            .clone()
            .unwrap_or_else(|| lms_analytics::AnalyticsConfig::Parquet(lms_analytics::ParquetConfig::new("lms-data/analytics")))
    }

    /// Loads defaults ← file ← environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
            f = f.merge(Yaml::file(path));
        }
        f = f.merge(
            Env::prefixed("LMS_")
                .split("__")
                .filter(|k| {
                    let k = k.as_str().to_ascii_lowercase();
                    SECTIONS.iter().any(|s| k.starts_with(&format!("{s}.")))
                }),
        );
        let mut config: Config = f.extract().context("invalid configuration")?;
        if config.api.jwt_secret.is_none() {
            config.api.jwt_secret = std::env::var("LMS_JWT_SECRET").ok().filter(|s| !s.is_empty());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("lms.yaml", "kafka:\n  brokers: file:9092\n  topic_prefix: dev.\nconsumer:\n  max_batch_records: 10\n")?;
            jail.set_env("LMS_KAFKA__BROKERS", "env:9092");
            jail.set_env("LMS_JWT_SECRET", "not a config section");
            jail.set_env("LMS_STORE__URL", "postgres://lms@db/lms");
            let c = Config::load(Some(Path::new("lms.yaml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.brokers, "env:9092");
            assert_eq!(c.kafka.topic_prefix, "dev.");
            assert_eq!(c.consumer.max_batch_records, 10);
            assert_eq!(c.store.url, "postgres://lms@db/lms");
            Ok(())
        });
    }

    #[test]
    fn the_analytics_store_is_chosen_by_file_or_environment() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert!(matches!(c.analytics(), lms_analytics::AnalyticsConfig::Parquet(_)), "{:?}", c.analytics());
            jail.set_env("LMS_ANALYTICS__STORE", "clickhouse");
            jail.set_env("LMS_ANALYTICS__URL", "http://ch:8123");
            jail.set_env("LMS_JWT_SECRET", "s3cret");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            let lms_analytics::AnalyticsConfig::Clickhouse(ch) = c.analytics() else { panic!("{:?}", c.analytics()) };
            assert_eq!(ch.url, "http://ch:8123");
            assert_eq!(c.api.jwt_secret.as_deref(), Some("s3cret"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("lms.yaml", "kafka:\n  brokerz: x\n")?;
            let err = Config::load(Some(Path::new("lms.yaml"))).err().map(|e| format!("{e:#}")).unwrap_or_default();
            assert!(err.contains("brokerz"), "{err}");
            Ok(())
        });
    }
}
