//! The thin HTTP write services of lms-pipeline, as axum routers.
//!
//! Thin means: authenticate, validate, put on the right topic, answer; no business state
//! lives here (**Architecture Invariant**: `api/` holds no business state; the one piece of
//! memory, recently accepted webhook ids, is an optimisation the processors do not rely on).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/events` | client events: one, a JSON array (≤ 1000) or NDJSON ([`events`]) |
//! | `POST /v1/xapi/statements` | xAPI 1.0.3 statements mapped onto events ([`xapi`]) |
//! | `POST /v1/enrollments`, `DELETE /v1/enrollments/{learner_id}/{course_id}` | enrollment events |
//! | `POST /v1/payments/webhook` | signed payment-provider callbacks ([`webhook`]) |
//! | `/livez` (`/healthz`), `/readyz`, `/metrics`, `/openapi.json` | operations |
//!
//! **Durable before 202** (Architecture Invariant): a 2xx means the broker acknowledged every
//! accepted event with `acks=all`. When some records of a request could not be produced
//! (broker down, delivery timeout, producer queue full) the answer is 503 with
//! `Retry-After`, listing the ids that were acknowledged anyway; ids are kept (or derived
//! deterministically), so the client's retry of the whole request changes nothing
//! downstream. While readiness knows the broker is unreachable, writes get 503 at once.
//!
//! # Wiring
//!
//! ```no_run
//! # async fn run(kafka: lms_bus::KafkaConfig, config: api::ApiConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let registry = prometheus::Registry::new();
//! let metrics = lms_bus::BusMetrics::register(&registry)?;
//! let topics = lms_bus::TopicsFile::bundled().topic_map(&kafka.topic_prefix);
//! let producer = Arc::new(lms_bus::Producer::new(&config.producer_kafka_config(&kafka), topics.clone(), metrics.clone(), "lms-api")?);
//! let (kafka2, topics2, metrics2) = (config.producer_kafka_config(&kafka), topics.clone(), metrics.clone());
//! let router = api::Api::new(&config, producer.clone(), &registry)?
//!     .producer_factory(Box::new(move || lms_bus::Producer::new(&kafka2, topics2.clone(), metrics2.clone(), "lms-api")))
//!     // .merge(read_routes)                       // `Router<()>` of other crates
//!     // .readiness_check(api::readiness_fn("store", || Box::pin(async { Ok(()) })))
//!     .into_router();
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! api::serve(&config, router, shutdown).await?;
//! # Ok(()) }
//! ```

pub mod analytics;
pub mod auth;
mod body;
pub mod client;
mod config;
mod cors;
pub mod credentials;
pub mod dashboard;
mod enrollments;
pub mod erasure;
mod events;
mod ingest;
pub mod learners;
pub mod notifications;
mod openapi;
mod ops;
pub mod problem;
mod producer;
mod rate_limit;
mod readiness;
mod telemetry;
pub mod webhook;
pub mod xapi;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::{delete, get, post};
use lms_bus::{Producer, Secret};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{Authenticator, Claims};
pub use config::{ApiConfig, JwtIssuerConfig, RateLimitConfig, ScopeClaim};
pub use ingest::{Accepted, Rejected};
pub use openapi::document as openapi_document;
pub use problem::Problem;
pub use producer::ProducerFactory;
pub use readiness::{ReadinessCheck, readiness_fn};
pub use telemetry::{ApiMetrics, RequestTrace};
pub use webhook::WebhookAccepted;

/// Why the API could not be built or served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The configuration is unusable.
    #[error("api configuration: {0}")]
    Config(String),
    /// A metric could not be registered (for example registered twice).
    #[error("api metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The listener could not be bound, or the server failed.
    #[error("api server: {0}")]
    Io(#[from] std::io::Error),
}

/// What the handlers share.
pub(crate) struct AppState {
    pub config: ApiConfig,
    pub producer: Arc<producer::ProducerSlot>,
    pub metrics: Arc<ApiMetrics>,
    pub readiness: Arc<readiness::Readiness>,
    pub limiter: rate_limit::RateLimiter,
    pub webhooks: webhook::Seen,
    /// The state store's record of accepted webhooks, shared by every instance.
    pub webhook_store: Option<lms_state::Store>,
    /// The stores `DELETE /v1/learners/{id}` erases from.
    pub erasure: Option<erasure::ErasureStores>,
    pub registry: Registry,
    pub openapi: Bytes,
}

/// The write API under construction: the built-in routes, plus routers and readiness checks
/// other crates add.
pub struct Api {
    config: ApiConfig,
    producer: Arc<Producer>,
    registry: Registry,
    metrics: Arc<ApiMetrics>,
    authenticator: Arc<Authenticator>,
    cors: Option<tower_http::cors::CorsLayer>,
    factory: Option<ProducerFactory>,
    extra: Vec<Router>,
    checks: Vec<Box<dyn ReadinessCheck>>,
    webhook_store: Option<lms_state::Store>,
    erasure: Option<erasure::ErasureStores>,
    /// The limit of a whole request, checked against the write limits by [`Api::new`].
    request_timeout: Duration,
}

impl Api {
    /// Prepares the API: checks the configuration (a JWT secret is required) and registers
    /// the API's metrics on `registry`, which `/metrics` serves. `producer` should be built
    /// from [`ApiConfig::producer_kafka_config`].
    pub fn new(config: &ApiConfig, producer: Arc<Producer>, registry: &Registry) -> Result<Api, ApiError> {
        let secret = config
            .jwt_secret
            .as_ref()
            .map(Secret::expose)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::Config("no JWT secret: set LMS_JWT_SECRET".to_owned()))?;
        if config.max_batch_events == 0 || config.max_body_bytes == 0 || config.max_event_bytes == 0 {
            return Err(ApiError::Config("max_body_bytes, max_batch_events and max_event_bytes must be positive".to_owned()));
        }
        if !(config.rate_limit.per_second.is_finite() && config.rate_limit.per_second >= 0.0) {
            return Err(ApiError::Config("rate_limit.per_second must be a number ≥ 0".to_owned()));
        }
        let authenticator = Authenticator::hs256(secret.as_bytes(), config.jwt_leeway_s).with_issuers(&config.jwt_issuers);
        for issuer in &config.jwt_issuers {
            if issuer.issuer.is_empty() || issuer.audience.is_empty() || issuer.tenant_claim.is_empty() {
                return Err(ApiError::Config("jwt_issuers: issuer, audience and tenant_claim must not be empty".to_owned()));
            }
            if !(issuer.jwks_url.starts_with("https://") || issuer.jwks_url.starts_with("http://")) {
                return Err(ApiError::Config(format!("jwt_issuers: the jwks_url of {} must be an http(s) URL", issuer.issuer)));
            }
        }
        let cors = cors::layer(&config.cors_allowed_origins).map_err(ApiError::Config)?;
        let request_timeout = config.request_timeout().map_err(ApiError::Config)?;
        Ok(Api {
            config: config.clone(),
            producer,
            registry: registry.clone(),
            metrics: ApiMetrics::register(registry)?,
            checks: authenticator.readiness_checks(),
            authenticator: Arc::new(authenticator),
            cors,
            factory: None,
            extra: Vec::new(),
            webhook_store: None,
            erasure: None,
            request_timeout,
        })
    }

    /// Adds the routes of another router (read endpoints of other crates). They get the
    /// same telemetry and can authenticate with the [`Claims`] extractor.
    #[must_use]
    pub fn merge(mut self, router: Router) -> Api {
        self.extra.push(router);
        self
    }

    /// How to build a fresh producer, to replace one that can no longer deliver once the
    /// broker is reachable again (see the `producer` module); without it the producer given
    /// to [`Api::new`] is kept whatever happens. Build it like the first one.
    #[must_use]
    pub fn producer_factory(mut self, factory: ProducerFactory) -> Api {
        self.factory = Some(factory);
        self
    }

    /// Remembers accepted payment webhooks in the state store (`webhook_deliveries`), so
    /// that a redelivery to any instance, also after a restart, answers 200 and produces
    /// nothing; records older than `webhook_retention_days` are deleted hourly. Without it
    /// only this instance's memory recognises redeliveries.
    #[must_use]
    pub fn webhook_store(mut self, store: lms_state::Store) -> Api {
        self.webhook_store = Some(store);
        self
    }

    /// Offers `DELETE /v1/learners/{learner_id}` over these stores (without them the route
    /// answers 404).
    #[must_use]
    pub fn erasure(mut self, stores: erasure::ErasureStores) -> Api {
        self.erasure = Some(stores);
        self
    }

    /// Adds a dependency `/readyz` checks in the background.
    #[must_use]
    pub fn readiness_check(mut self, check: Box<dyn ReadinessCheck>) -> Api {
        self.checks.push(check);
        self
    }

    /// The token verifier the API uses (to share with tools or other servers).
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator.clone()
    }

    /// The finished router. Starts the background readiness task, so it must be called
    /// inside a Tokio runtime; the task ends when the router (every clone) is dropped.
    pub fn into_router(self) -> Router {
        let readiness = Arc::new(readiness::Readiness::new());
        let (limit, retry_after_s) = (self.request_timeout, self.config.retry_after_s);
        let openapi = Bytes::from(serde_json::to_vec_pretty(&openapi::document()).unwrap_or_default());
        let state = Arc::new(AppState {
            limiter: rate_limit::RateLimiter::new(&self.config.rate_limit),
            webhooks: webhook::Seen::new(self.config.webhook_dedupe_capacity),
            webhook_store: self.webhook_store,
            erasure: self.erasure,
            producer: Arc::new(producer::ProducerSlot::new(self.producer, self.factory)),
            metrics: self.metrics.clone(),
            readiness: readiness.clone(),
            registry: self.registry,
            openapi,
            config: self.config,
        });
        let monitor = readiness::Monitor {
            readiness: Arc::downgrade(&readiness),
            producer: Arc::downgrade(&state.producer),
            checks: Arc::new(self.checks),
            interval: Duration::from_millis(state.config.readiness_interval_ms.max(10)),
            timeout: Duration::from_millis(state.config.readiness_timeout_ms.max(10)),
        };
        drop(readiness);
        tokio::spawn(monitor.run());
        if state.webhook_store.is_some() {
            tokio::spawn(webhook::expire_hourly(Arc::downgrade(&state)));
        }

        let mut router = Router::new()
            .route("/v1/events", post(events::post_events))
            .route("/v1/xapi/statements", post(xapi::post_statements))
            .route("/v1/enrollments", post(enrollments::post_enrollment))
            .route("/v1/enrollments/{learner_id}/{course_id}", delete(enrollments::delete_enrollment))
            .route("/v1/payments/webhook", post(webhook::post_webhook))
            .route("/v1/learners/{learner_id}", delete(erasure::delete_learner))
            .route("/livez", get(ops::livez))
            .route("/healthz", get(ops::livez))
            .route("/readyz", get(ops::readyz))
            .route("/metrics", get(ops::metrics))
            .route("/openapi.json", get(ops::openapi))
            .with_state(state);
        for extra in self.extra {
            router = router.merge(extra);
        }
        let router = router
            .fallback(|| async { Problem::not_found("no such route") })
            .method_not_allowed_fallback(|| async { Problem::method_not_allowed("the route exists, not with this method") })
            // A request not answered in time (tower's timeout) is a problem+json 503 inside
            // the request span and the metrics; the handler's future is dropped.
            .layer(
                tower::ServiceBuilder::new()
                    .layer(axum::error_handling::HandleErrorLayer::new(move |_: tower::BoxError| async move {
                        Problem::unavailable(format!("the request was not answered within {} ms", limit.as_millis()), retry_after_s)
                    }))
                    .timeout(limit),
            )
            .layer(axum::Extension(self.authenticator))
            .layer(axum::middleware::from_fn(telemetry::bind_trace))
            // The request span (tower-http), exported over OTLP when the binary exports traces;
            // its own answer and failure lines are replaced by `Answered`'s one line.
            .layer(
                tower_http::trace::TraceLayer::new_for_http()
                    .make_span_with(telemetry::RequestSpan)
                    .on_request(())
                    .on_response(telemetry::Answered)
                    .on_eos(())
                    .on_failure(()),
            )
            .layer(axum::middleware::from_fn_with_state(self.metrics, telemetry::count))
            // Request ids (tower-http): a caller's `x-request-id` is kept, else a UUID is set
            // before the request span opens (which records it), and the answer echoes it.
            .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
            .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(tower_http::request_id::MakeRequestUuid));
        // Outermost: a preflight is answered before routing (no 405), and every answer,
        // problems included, carries the headers a browser needs to read it.
        match self.cors {
            Some(cors) => router.layer(cors),
            None => router,
        }
    }
}

/// Serves `router` on `config.listen` until `shutdown` is cancelled, then stops accepting
/// connections and finishes the requests in flight (graceful shutdown).
pub async fn serve(config: &ApiConfig, router: Router, shutdown: CancellationToken) -> Result<(), ApiError> {
    let listener = TcpListener::bind(&config.listen).await?;
    serve_on(listener, router, shutdown).await
}

/// [`serve`] on a listener already bound (tests bind `127.0.0.1:0`).
pub async fn serve_on(listener: TcpListener, router: Router, shutdown: CancellationToken) -> Result<(), ApiError> {
    tracing::info!(address = %listener.local_addr()?, "HTTP API listening");
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    tracing::info!("HTTP API stopped; requests in flight were answered");
    Ok(())
}
