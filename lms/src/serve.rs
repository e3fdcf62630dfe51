//! `lms api`: the write and read HTTP services in one server.
//!
//! Write routes put events on Kafka (crate `api`); read routes answer from the processors'
//! state store (progress, achievements) and from the analytics store. `/readyz` checks the
//! broker, the state store and the analytics store. `/metrics` also carries every consumer
//! group's lag computed from its offsets, live members or not (`crate::ops::lag`).

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use lms_analytics::AnalyticsStore;
use lms_bus::{BusMetrics, Producer, TopicsFile};
use lms_state::Store;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// What the HTTP services read from, opened once by the caller (`lms api`, `lms demo`).
pub struct Backends {
    /// The processors' state store.
    pub store: Store,
    /// The analytics store.
    pub analytics: Arc<dyn AnalyticsStore>,
}

impl Backends {
    /// Opens (and migrates) both stores of `config`.
    pub async fn open(config: &Config) -> anyhow::Result<Backends> {
        let store = processors::open_store(&config.store.url, config.store.max_connections)
            .await
            .with_context(|| format!("cannot open the state store {}", lms_state::redact_url(&config.store.url)))?;
        let analytics = open_analytics(config).await?;
        Ok(Backends { store, analytics })
    }
}

/// Opens the analytics store and brings its schema up to date.
pub async fn open_analytics(config: &Config) -> anyhow::Result<Arc<dyn AnalyticsStore>> {
    let analytics = config.analytics().open().await.context("cannot open the analytics store")?;
    let report = analytics.migrate().await.context("cannot migrate the analytics store")?;
    if !report.applied.is_empty() {
        tracing::info!(applied = ?report.applied, "analytics store migrated");
    }
    Ok(analytics)
}

/// The whole HTTP router: write routes, read routes (learners, notifications, analytics),
/// the dashboard page (offering `hints` in its selectors), operations. Bus and API metrics
/// go to `registry`, which `/metrics` serves.
pub fn router(
    config: &Config,
    registry: &Registry,
    metrics: Arc<BusMetrics>,
    backends: &Backends,
    hints: api::dashboard::DashboardHints,
) -> anyhow::Result<Router> {
    let kafka = config.api.producer_kafka_config(&config.kafka);
    let topics = TopicsFile::bundled().topic_map(&config.kafka.topic_prefix);
    let producer = Arc::new(Producer::new(&kafka, topics.clone(), Arc::clone(&metrics), "lms-api")?);
    let factory_metrics = Arc::clone(&metrics);
    let store = backends.store.clone();
    let analytics = Arc::clone(&backends.analytics);
    let credentials = Arc::new(api::credentials::Credentials::load(&config.api.credentials)?);
    let api = api::Api::new(&config.api, producer, registry)?
        .producer_factory(Box::new(move || Producer::new(&kafka, topics.clone(), Arc::clone(&factory_metrics), "lms-api")))
        .merge(api::learners::router(backends.store.clone()))
        .merge(api::credentials::router(backends.store.clone(), credentials))
        .merge(api::notifications::router(backends.store.clone()))
        .merge(api::analytics::router(Arc::clone(&backends.analytics)))
        .merge(api::dashboard::router_with(hints))
        .webhook_store(backends.store.clone())
        .erasure(api::erasure::ErasureStores { store: backends.store.clone(), analytics: Arc::clone(&backends.analytics) })
        .readiness_check(api::readiness_fn("state_store", move || {
            let store = store.clone();
            Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
        }))
        .readiness_check(api::readiness_fn("analytics_store", move || {
            let analytics = Arc::clone(&analytics);
            Box::pin(async move { analytics.ping().await.map_err(|e| e.to_string()) })
        }));
    Ok(api.into_router())
}

/// `lms api`: serves until SIGINT/SIGTERM, then answers the requests in flight and exits.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    config.require_stores("api", true)?;
    let backends = Backends::open(config).await?;
    let registry = prometheus::default_registry();
    let metrics = BusMetrics::register(registry)?;
    let router = router(config, registry, metrics, &backends, api::dashboard::DashboardHints::default())?;
    let shutdown = CancellationToken::new();
    let lag = match config.api.lag_refresh_s {
        0 => None,
        s => Some(crate::ops::lag::spawn(config, registry, std::time::Duration::from_secs(s), shutdown.clone())?),
    };
    let mut server = tokio::spawn({
        let (api, shutdown) = (config.api.clone(), shutdown.clone());
        async move { api::serve(&api, router, shutdown).await }
    });
    tracing::info!(
        listen = %config.api.listen,
        brokers = %config.kafka.brokers,
        store = %lms_state::redact_url(&config.store.url),
        "HTTP services starting; SIGINT/SIGTERM drains and stops"
    );
    tokio::select! {
        () = crate::shutdown_signal() => shutdown.cancel(),
        r = &mut server => return r.context("the HTTP server task failed")?.context("the HTTP server failed"),
    }
    server.await.context("the HTTP server task failed")?.context("the HTTP server failed")?;
    if let Some(lag) = lag {
        let _ = tokio::task::spawn_blocking(move || lag.join()).await;
    }
    backends.store.close().await;
    Ok(())
}
