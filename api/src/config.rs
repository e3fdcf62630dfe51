//! Configuration of the HTTP services. Every option name carries its unit.
//!
//! The binary reads it as the `api` section of its configuration (defaults, then the YAML
//! file, then `LMS_API__<KEY>` environment variables) and fills [`ApiConfig::jwt_secret`]
//! from `LMS_JWT_SECRET`.

use std::collections::BTreeMap;
use std::time::Duration;

use lms_bus::{KafkaConfig, Secret};
use serde::{Deserialize, Serialize};

/// How the HTTP services listen, authenticate, limit and answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the HTTP server listens on, `host:port`.
    pub listen: String,
    /// Secret of the HS256 JSON Web Tokens clients authenticate with. The binary fills it
    /// from the environment variable `LMS_JWT_SECRET`; the services refuse to start without it.
    pub jwt_secret: Option<Secret>,
    /// Clock skew tolerated when checking a token's `exp`, in seconds.
    pub jwt_leeway_s: u64,
    /// Identity providers whose RS256/ES256 tokens are accepted beside the HS256 ones: a
    /// token whose `iss` is one of these is verified only with the keys its JWKS URL
    /// publishes (see [`JwtIssuerConfig`]).
    pub jwt_issuers: Vec<JwtIssuerConfig>,
    /// Browser origins (`https://lms.example.org`, scheme, host and port, no path) allowed to
    /// call the API cross-origin (CORS, preflight included); empty: no CORS headers at all,
    /// and browsers refuse cross-origin calls.
    pub cors_allowed_origins: Vec<String>,
    /// Achievements as Open Badges 3.0 credentials: the public base URL, and each issuing
    /// tenant's name and signing key file (`crate::credentials`).
    pub credentials: crate::credentials::CredentialsConfig,
    /// Largest request body accepted, in bytes; a larger body is answered 413.
    pub max_body_bytes: usize,
    /// Most events (or xAPI statements) in one request; more is answered 413.
    pub max_batch_events: usize,
    /// Largest single event (its JSON), in bytes; a larger one is rejected (422) at its index.
    pub max_event_bytes: usize,
    /// How long a client may take to send its whole body before the request is answered 408
    /// (protects the service from slow bodies), in milliseconds.
    pub body_timeout_ms: u64,
    /// How long any request may take from its arrival to its answer before it is answered
    /// 503 with `Retry-After` (a read whose store does not answer, for example), in
    /// milliseconds. It must exceed `body_timeout_ms + delivery_timeout_ms`, so that a write
    /// is always answered by its own limits, with the list of what was accepted, and never
    /// cut off in the middle of a delivery.
    pub request_timeout_ms: u64,
    /// Per-tenant rate limit of write requests (token bucket).
    pub rate_limit: RateLimitConfig,
    /// Webhook signing secret per tenant: `POST /v1/payments/webhook` accepts calls only for
    /// the tenants listed here.
    pub webhook_secrets: BTreeMap<String, Secret>,
    /// Oldest (or furthest in the future) webhook signature timestamp accepted, in seconds.
    pub webhook_tolerance_s: u64,
    /// Webhook ids remembered per instance to answer redeliveries without producing again.
    pub webhook_dedupe_capacity: usize,
    /// How long the state store remembers accepted webhooks (any instance, across restarts;
    /// see [`crate::Api::webhook_store`]), in days. A redelivery after that is produced again,
    /// with the same event id, which the processors drop.
    pub webhook_retention_days: u32,
    /// The `Retry-After` value sent with 503 answers (broker unavailable, queue full), in
    /// seconds.
    pub retry_after_s: u64,
    /// How long the API's producer waits for the broker to acknowledge a record before the
    /// request is answered 503 (librdkafka `message.timeout.ms` of the API's producer), in
    /// milliseconds. See [`ApiConfig::producer_kafka_config`].
    pub delivery_timeout_ms: u64,
    /// How long the API's producer waits to fill a batch before sending it (librdkafka
    /// `linger.ms` of the API's producer), in milliseconds. Every request waits for it; a
    /// shorter linger answers sooner when the load is light, but costs the broker more,
    /// smaller requests when it is heavy (1 ms instead of 5 more than doubled the p99 of
    /// `loadtest http`'s paced phase on 2 cores).
    pub linger_ms: u64,
    /// How often the background readiness task checks the broker and the registered
    /// checks, in milliseconds.
    pub readiness_interval_ms: u64,
    /// How long one readiness check may take before it counts as failed, in milliseconds.
    pub readiness_timeout_ms: u64,
    /// How often `lms api` computes every consumer group's lag from the stored and
    /// committed offsets and the log ends (`lms_group_lag_records` on `/metrics`, present
    /// when a group has no live member), in seconds; 0 turns it off.
    pub lag_refresh_s: u64,
}

/// An identity provider (OpenID Connect issuer) whose tokens the API accepts.
///
/// The signing algorithm of a token is the one of the published key its `kid` names (`RSA`
/// keys RS256, or the key's `alg`; `EC` keys ES256 on P-256, ES384 on P-384), never the one
/// the token's header claims: a header that names another algorithm is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// The issuer, exactly as its tokens carry it in `iss` (`https://login.example.org/`).
    pub issuer: String,
    /// The audience a token must name in `aud` to be accepted here.
    pub audience: String,
    /// Where the issuer publishes its signing keys (a JWK Set, the `jwks_uri` of its OpenID
    /// discovery document).
    pub jwks_url: String,
    /// The claim that carries the tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// How the issuer gives scopes: `scope` (one space-separated string) or `scp` (an array
    /// of strings).
    #[serde(default)]
    pub scope_claim: ScopeClaim,
    /// Shortest time between two fetches of the key set, in seconds: a token naming an
    /// unknown `kid` refetches it at most this often, and the readiness task refreshes it
    /// this often.
    #[serde(default = "default_refresh_min_interval_s")]
    pub refresh_min_interval_s: u64,
}

fn default_tenant_claim() -> String {
    "tenant".to_owned()
}

fn default_refresh_min_interval_s() -> u64 {
    60
}

/// Which claim carries a token's scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeClaim {
    /// `scope`: one space-separated string (RFC 8693, most providers).
    #[default]
    Scope,
    /// `scp`: an array of strings (Microsoft Entra ID, Okta).
    Scp,
}

/// A token bucket per tenant: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Write requests per second a tenant may sustain; `0` turns the limit off. A batch
    /// counts as one request.
    pub per_second: f64,
    /// Write requests a tenant may send at once after being idle (the bucket size).
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { per_second: 1_000.0, burst: 2_000 }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".to_owned(),
            jwt_secret: None,
            jwt_leeway_s: 30,
            jwt_issuers: Vec::new(),
            cors_allowed_origins: Vec::new(),
            credentials: crate::credentials::CredentialsConfig::default(),
            max_body_bytes: 4 * 1024 * 1024,
            max_batch_events: 1_000,
            max_event_bytes: 64 * 1024,
            body_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            rate_limit: RateLimitConfig::default(),
            webhook_secrets: BTreeMap::new(),
            webhook_tolerance_s: 300,
            webhook_dedupe_capacity: 100_000,
            webhook_retention_days: 30,
            retry_after_s: 2,
            delivery_timeout_ms: 5_000,
            linger_ms: 5,
            readiness_interval_ms: 1_000,
            readiness_timeout_ms: 2_000,
            lag_refresh_s: 15,
        }
    }
}

impl ApiConfig {
    /// The Kafka configuration of the API's producer: `kafka` with the delivery timeout
    /// replaced by [`ApiConfig::delivery_timeout_ms`], so that an unavailable broker turns
    /// into a 503 within seconds instead of holding requests for the bus default (30 s),
    /// and the linger by [`ApiConfig::linger_ms`].
    pub fn producer_kafka_config(&self, kafka: &KafkaConfig) -> KafkaConfig {
        let mut k = kafka.clone();
        k.delivery_timeout_ms = self.delivery_timeout_ms;
        k.linger_ms = self.linger_ms;
        k
    }

    /// The limit of the whole request (see [`ApiConfig::request_timeout_ms`]), or why it is
    /// too short.
    pub(crate) fn request_timeout(&self) -> Result<Duration, String> {
        let writes = self.body_timeout_ms.saturating_add(self.delivery_timeout_ms);
        if self.request_timeout_ms <= writes {
            return Err(format!(
                "request_timeout_ms ({}) must exceed body_timeout_ms + delivery_timeout_ms ({writes}): a write must be answered by its own limits",
                self.request_timeout_ms
            ));
        }
        Ok(Duration::from_millis(self.request_timeout_ms))
    }

    pub(crate) fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's error type, in tests only
mod tests {
    use super::*;
    use figment::Figment;
    use figment::providers::{Env, Format, Serialized, Yaml};

    fn load() -> Result<ApiConfig, figment::Error> {
        Figment::from(Serialized::defaults(ApiConfig::default()))
            .merge(Yaml::file("lms.yaml").nested())
            .merge(Env::prefixed("LMS_API__").split("__"))
            .extract()
    }

    /// The README example: a file section `api:` and `LMS_API__*` overrides, as the binary
    /// loads them.
    #[test]
    fn file_and_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "lms.yaml",
                "default:\n  listen: 127.0.0.1:9000\n  rate_limit:\n    per_second: 50\n  webhook_secrets:\n    acme: whsec_1\n",
            )?;
            jail.set_env("LMS_API__MAX_BATCH_EVENTS", "10");
            jail.set_env("LMS_API__RATE_LIMIT__BURST", "7");
            let c = load()?;
            assert_eq!(c.listen, "127.0.0.1:9000");
            assert_eq!(c.max_batch_events, 10);
            assert_eq!(c.rate_limit, RateLimitConfig { per_second: 50.0, burst: 7 });
            assert_eq!(c.webhook_secrets["acme"].expose(), "whsec_1");
            assert_eq!(c.retry_after_s, 2, "defaults stay");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused_and_secrets_not_printed() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("lms.yaml", "default:\n  max_body_byte: 10\n")?;
            let err = load().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("max_body_byte"), "{err}");
            Ok(())
        });
        let c = ApiConfig {
            jwt_secret: Some("s3cret".into()),
            webhook_secrets: [("acme".to_owned(), "whsec_x".into())].into(),
            ..ApiConfig::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("whsec_x") && shown.contains("acme"), "{shown}");
    }

    /// The README's issuer: the defaults of `tenant_claim`, `scope_claim` and
    /// `refresh_min_interval_s`, `scp`, and the origins from the environment.
    #[test]
    fn issuers_and_origins() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "lms.yaml",
                "default:\n  jwt_issuers:\n    - issuer: https://login.example.org/\n      audience: lms-api\n      jwks_url: https://login.example.org/jwks\n    - issuer: https://entra.example/\n      audience: api://lms\n      jwks_url: https://entra.example/keys\n      tenant_claim: tid\n      scope_claim: scp\n      refresh_min_interval_s: 5\n",
            )?;
            jail.set_env("LMS_API__CORS_ALLOWED_ORIGINS", "[https://lms.example.org, http://127.0.0.1:8000]");
            let c = load()?;
            assert_eq!(c.jwt_issuers.len(), 2);
            let (first, second) = (&c.jwt_issuers[0], &c.jwt_issuers[1]);
            assert_eq!((first.tenant_claim.as_str(), first.scope_claim, first.refresh_min_interval_s), ("tenant", ScopeClaim::Scope, 60));
            assert_eq!((second.tenant_claim.as_str(), second.scope_claim, second.refresh_min_interval_s), ("tid", ScopeClaim::Scp, 5));
            assert_eq!(c.cors_allowed_origins, ["https://lms.example.org", "http://127.0.0.1:8000"]);
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "lms.yaml",
                "default:\n  jwt_issuers:\n    - issuer: x\n      audience: y\n      jwks_url: z\n      scope_claim: scopes\n",
            )?;
            assert!(load().is_err(), "an unknown scope_claim is refused");
            Ok(())
        });
    }

    #[test]
    fn the_producer_gets_the_short_delivery_timeout() {
        let c = ApiConfig { delivery_timeout_ms: 1234, linger_ms: 3, ..ApiConfig::default() };
        let k = c.producer_kafka_config(&KafkaConfig::new("b:9092").with_prefix("p."));
        assert_eq!((k.delivery_timeout_ms, k.linger_ms, k.topic_prefix.as_str()), (1234, 3, "p."));
    }
}
