//! Configuration: defaults, then a YAML file (`--config`), then `LMS_<SECTION>__<KEY>`
//! environment variables (for example `LMS_KAFKA__BROKERS=kafka:9092`).
//!
//! Every secret can come from a file instead (a mounted Kubernetes Secret): a key
//! `<name>_file` beside a secret key `<name>` (`password`, `secret`, `jwt_secret`), or
//! `api.webhook_secret_files` (tenant → file) beside `api.webhook_secrets`. The files are read
//! once, at startup, and lose their trailing line break; errors name the key and the file,
//! never the content. See [`resolve_secret_files`].

use std::path::Path;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use figment::value::{Dict, Tag, Value};
use lms_bus::{ConsumerConfig, KafkaConfig, Secret};
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
    /// `store: parquet` (with `dir`, the embedded twin). Absent: `lms api` and `lms processor
    /// run analytics` refuse to start ([`Config::require_stores`]); the other commands use the
    /// twin in `lms-data/analytics` (see [`Config::analytics`]). No default is merged in, so
    /// that the file or the environment can choose either store without leftover fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analytics: Option<lms_analytics::AnalyticsConfig>,
    /// Whether `store.url` was set by the file or the environment rather than left at its
    /// default (see [`Config::require_stores`]).
    #[serde(skip)]
    pub store_url_set: bool,
}

/// Puts the components' configuration sections in `ctx` (each component reads its own by
/// type): the `notifications` and `analytics` sections, and the achievements' rules file.
pub fn provide_sections(ctx: &mut processors::Context, config: &Config, rules: Option<std::path::PathBuf>) {
    ctx.extensions.insert(config.notifications.clone());
    ctx.extensions.insert(config.analytics.clone());
    ctx.extensions.insert(processors::achievements::AchievementsConfig { rules });
}

/// The processors' state store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user:password@host/db` (production) or `sqlite://<path>` (one process).
    /// `lms api`, `processor run`, `migrate`, `groups` and `replay` need it set
    /// ([`Config::require_stores`]); `lms demo` sets its own.
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
            store_url_set: false,
        }
    }
}

impl Config {
    /// Refuses to go on without an explicitly configured state store and, when
    /// `needs_analytics`, analytics store, naming the key to set. `lms api` and `lms processor
    /// run` call it before opening anything (`command` names them): a server process must not
    /// fall back silently to a private SQLite file or Parquet directory on its own disk, where
    /// its state and analytics would be lost with the container and invisible to the other
    /// processes. `lms demo` sets its embedded stores itself.
    pub fn require_stores(&self, command: &str, needs_analytics: bool) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.store_url_set,
            "`lms {command}` needs an explicitly configured state store: set `store.url` in the config file or \
             LMS_STORE__URL in the environment (postgres://user:password@host:5432/db; sqlite://<path> only for \
             a single process). `lms demo` runs with embedded stores and needs neither"
        );
        anyhow::ensure!(
            !needs_analytics || self.analytics.is_some(),
            "`lms {command}` needs an explicitly configured analytics store: set `analytics.store` in the config \
             file or LMS_ANALYTICS__STORE in the environment, to `clickhouse` (with LMS_ANALYTICS__URL such as \
             http://clickhouse:8123 and LMS_ANALYTICS__DATABASE) or `parquet` (with LMS_ANALYTICS__DIR, a directory \
             only this process writes). `lms demo` runs with embedded stores and needs neither"
        );
        Ok(())
    }

    /// The analytics store to use: the configured one, else the twin in `lms-data/analytics`.
    pub fn analytics(&self) -> lms_analytics::AnalyticsConfig {
        self.analytics
            .clone()
            .unwrap_or_else(|| lms_analytics::AnalyticsConfig::Parquet(lms_analytics::ParquetConfig::new("lms-data/analytics")))
    }

    /// Loads defaults ← file ← environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        // What the file and the environment set, without the defaults: whether they set
        // `store.url` is asked by [`Config::require_stores`].
        let mut user = Figment::new();
        if let Some(path) = file {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
            user = user.merge(Yaml::file(path));
        }
        user = user.merge(Env::prefixed("LMS_").split("__").filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|s| k.starts_with(&format!("{s}.")))
        }));
        let store_url_set = user.find_value("store.url").is_ok_and(|v| v.as_str().is_none_or(|s| !s.is_empty()));
        let f = Figment::from(Serialized::defaults(Config::default())).merge(user);
        let mut tree: Value = f.extract().context("invalid configuration")?;
        resolve_secret_files(&mut tree, "")?;
        let mut config: Config = Figment::from(Serialized::defaults(tree)).extract().context("invalid configuration")?;
        config.store_url_set = store_url_set;
        if config.api.jwt_secret.is_none() {
            config.api.jwt_secret = std::env::var("LMS_JWT_SECRET").ok().filter(|s| !s.is_empty()).map(Secret::from);
        }
        if config.api.jwt_secret.is_none()
            && let Some(path) = std::env::var_os("LMS_JWT_SECRET_FILE").filter(|p| !p.is_empty())
        {
            config.api.jwt_secret = Some(Secret::from_file(&path).context("LMS_JWT_SECRET_FILE")?);
        }
        config.kafka.security.validate()?;
        Ok(config)
    }
}

/// Secret keys that may instead be given as `<key>_file`.
const SECRET_KEYS: &[&str] = &["password", "secret", "jwt_secret"];
/// Maps of secrets that may instead be given as a map of files: (files key, secrets key).
const SECRET_FILE_MAPS: &[(&str, &str)] = &[("webhook_secret_files", "webhook_secrets")];

/// Replaces every `<secret>_file: <path>` of `tree` by `<secret>: <the file's content>`
/// (and every entry of a [`SECRET_FILE_MAPS`] files map by an entry of its secrets map).
/// Setting both the secret and its file is refused. `at` is the path of `tree`, for errors.
pub fn resolve_secret_files(tree: &mut Value, at: &str) -> anyhow::Result<()> {
    let Value::Dict(_, dict) = tree else { return Ok(()) };
    let keys: Vec<String> = dict.keys().cloned().collect();
    for key in keys {
        let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
        if let Some(stem) = key.strip_suffix("_file").filter(|s| SECRET_KEYS.contains(s)) {
            let Some(file) = dict.remove(&key) else { continue };
            let Some(file) = file.as_str().map(str::to_owned) else { anyhow::bail!("{path}: expected a file path") };
            if dict.get(stem).is_some_and(is_set) {
                anyhow::bail!("{path} and {at}.{stem} are both set: set one");
            }
            let secret = Secret::from_file(&file).with_context(|| path.clone())?;
            dict.insert(stem.to_owned(), Value::String(Tag::Default, secret.expose().to_owned()));
        } else if let Some((_, map_key)) = SECRET_FILE_MAPS.iter().find(|(files, _)| *files == key) {
            let Some(Value::Dict(_, files)) = dict.remove(&key) else { anyhow::bail!("{path}: expected a map of file paths") };
            let mut secrets = match dict.remove(*map_key) {
                Some(Value::Dict(_, d)) => d,
                _ => Dict::new(),
            };
            for (name, file) in files {
                let Some(file) = file.as_str() else { anyhow::bail!("{path}.{name}: expected a file path") };
                if secrets.contains_key(&name) {
                    anyhow::bail!("{path}.{name} and {at}.{map_key}.{name} are both set: set one");
                }
                let secret = Secret::from_file(file).with_context(|| format!("{path}.{name}"))?;
                secrets.insert(name, Value::String(Tag::Default, secret.expose().to_owned()));
            }
            dict.insert((*map_key).to_owned(), Value::Dict(Tag::Default, secrets));
        } else if let Some(child) = dict.get_mut(&key) {
            resolve_secret_files(child, &path)?;
        }
    }
    Ok(())
}

/// A value that sets something (not an absent option, not an empty string).
fn is_set(v: &Value) -> bool {
    match v {
        Value::Empty(..) => false,
        Value::String(_, s) => !s.is_empty(),
        _ => true,
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's error type, in tests only (as in api/src/config.rs)
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
            assert_eq!(c.api.jwt_secret.as_ref().map(Secret::expose), Some("s3cret"));
            Ok(())
        });
    }

    /// Every secret of the configuration from a file, as Kubernetes mounts them: the files'
    /// contents without their trailing newline, and no secret in the configuration's `Debug`
    /// output .
    #[test]
    fn secrets_come_from_files_and_are_not_printed() {
        figment::Jail::expect_with(|jail| {
            for (name, content) in [
                ("sasl", "sasl-pw\n"),
                ("ch", "ch-pw\n"),
                ("jwt", "jwt-key\r\n"),
                ("smtp", "smtp-pw\n"),
                ("hook", "hook-secret\n"),
                ("acme", "whsec_acme\n"),
            ] {
                jail.create_file(name, content)?;
            }
            jail.create_file(
                "lms.yaml",
                "kafka:\n  brokers: k:9093\n  security:\n    protocol: sasl_ssl\n    sasl: { mechanism: SCRAM-SHA-256, username: lms, password_file: sasl }\n\
                 analytics: { store: clickhouse, url: https://ch:8443, user: lms, password_file: ch }\n\
                 api:\n  jwt_secret_file: jwt\n  webhook_secret_files: { acme: acme }\n  webhook_secrets: { beta: whsec_beta }\n\
                 notifications:\n  smtp: { host: smtp, password_file: smtp }\n  webhooks: { acme: { url: https://h.example, secret_file: hook } }\n",
            )?;
            let c = Config::load(Some(Path::new("lms.yaml"))).map_err(|e| format!("{e:#}"))?;
            let sasl = c.kafka.security.sasl.as_ref().expect("sasl");
            assert_eq!(sasl.password.expose(), "sasl-pw");
            let lms_analytics::AnalyticsConfig::Clickhouse(ch) = c.analytics() else { panic!("clickhouse") };
            assert_eq!(ch.password.as_ref().map(Secret::expose), Some("ch-pw"));
            assert_eq!(c.api.jwt_secret.as_ref().map(Secret::expose), Some("jwt-key"));
            assert_eq!(c.api.webhook_secrets["acme"].expose(), "whsec_acme");
            assert_eq!(c.api.webhook_secrets["beta"].expose(), "whsec_beta");
            assert_eq!(c.notifications.smtp.password.as_ref().map(Secret::expose), Some("smtp-pw"));
            assert_eq!(c.notifications.webhooks["acme"].secret.expose(), "hook-secret");
            let shown = format!("{:?} {:?} {:?} {:?}", c.kafka, c.analytics, c.api, c.notifications);
            let dumped = serde_json::to_string(&c).expect("a configuration dump");
            for secret in ["sasl-pw", "ch-pw", "jwt-key", "whsec_acme", "whsec_beta", "smtp-pw", "hook-secret"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
                assert!(!dumped.contains(secret), "{secret} in {dumped}");
            }
            Ok(())
        });
    }

    #[test]
    fn secret_files_fail_clearly() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("LMS_KAFKA__SECURITY__PROTOCOL", "sasl_ssl");
            jail.set_env("LMS_KAFKA__SECURITY__SASL__MECHANISM", "PLAIN");
            jail.set_env("LMS_KAFKA__SECURITY__SASL__USERNAME", "lms");
            jail.set_env("LMS_KAFKA__SECURITY__SASL__PASSWORD_FILE", "/nonexistent/sasl");
            let err = Config::load(None).err().map(|e| format!("{e:#}")).unwrap_or_default();
            assert!(err.contains("kafka.security.sasl.password_file") && err.contains("/nonexistent/sasl"), "{err}");
            jail.create_file("pw", "x")?;
            jail.set_env("LMS_KAFKA__SECURITY__SASL__PASSWORD_FILE", "pw");
            jail.set_env("LMS_KAFKA__SECURITY__SASL__PASSWORD", "y");
            let err = Config::load(None).err().map(|e| format!("{e:#}")).unwrap_or_default();
            assert!(err.contains("both set"), "{err}");
            jail.set_env("LMS_KAFKA__SECURITY__SASL__PASSWORD", "");
            jail.set_env("LMS_KAFKA__SECURITY__PROTOCOL", "ssl");
            let err = Config::load(None).err().map(|e| format!("{e:#}")).unwrap_or_default();
            assert!(err.contains("does not use SASL"), "{err}");
            Ok(())
        });
    }

    /// `lms api` and `lms processor run` name the key they miss; a store set by the file or
    /// the environment (not an empty value) satisfies them.
    #[test]
    fn server_commands_require_explicit_stores() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            let err = c.require_stores("api", true).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("`lms api`") && err.contains("`store.url`") && err.contains("LMS_STORE__URL"), "{err}");
            jail.set_env("LMS_STORE__URL", "");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert!(c.require_stores("processor run", false).is_err(), "an empty LMS_STORE__URL sets nothing");
            jail.set_env("LMS_STORE__URL", "postgres://lms@db/lms");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert!(c.require_stores("processor run", false).is_ok());
            let err = c.require_stores("processor run", true).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains("`lms processor run`") && err.contains("`analytics.store`") && err.contains("LMS_ANALYTICS__STORE"),
                "{err}"
            );
            jail.clear_env();
            jail.create_file("lms.yaml", "store:\n  url: sqlite://state.db\nanalytics:\n  store: parquet\n  dir: analytics\n")?;
            let c = Config::load(Some(Path::new("lms.yaml"))).map_err(|e| e.to_string())?;
            assert!(c.require_stores("api", true).is_ok(), "both stores from the file");
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
