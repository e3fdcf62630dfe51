//! The operations endpoints of a processor process: `/livez` (alias `/healthz`),
//! `/readyz` (broker and state store reachable) and `/metrics` (Prometheus text format),
//! as docs/CONTRACT.md asks of every service. `lms processor run --listen <addr>` serves
//! them; Kubernetes probes and Prometheus scrape them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use lms_bus::Producer;
use lms_store::Store;
use prometheus::{Encoder, IntGauge, TextEncoder};
use tokio_util::sync::CancellationToken;

struct Health {
    store: Store,
    producer: Arc<Producer>,
    ready: IntGauge,
}

/// Serves the endpoints on `listen` until `shutdown` is cancelled. Registers `lms_ready`
/// (1 when the last `/readyz` found the broker and the store reachable) in the default
/// registry.
pub async fn serve(listen: SocketAddr, store: Store, producer: Arc<Producer>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ready = IntGauge::new("lms_ready", "1 when the broker and the state store answered the last readiness check.")?;
    prometheus::default_registry().register(Box::new(ready.clone()))?;
    let state = Arc::new(Health { store, producer, ready });
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/healthz", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "serving /livez, /healthz, /readyz, /metrics");
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    Ok(())
}

async fn livez() -> &'static str {
    "alive\n"
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let producer = Arc::clone(&h.producer);
    let broker = tokio::task::spawn_blocking(move || producer.broker_reachable(Duration::from_secs(2))).await.unwrap_or(false);
    let store = tokio::time::timeout(Duration::from_secs(2), h.store.ping()).await;
    let store = match store {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    };
    let ok = broker && store.is_ok();
    h.ready.set(i64::from(ok));
    let body = format!(
        "broker: {}\nstore: {}\n",
        if broker { "ok" } else { "unreachable" },
        store.err().unwrap_or_else(|| "ok".to_owned())
    );
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

async fn metrics() -> impl IntoResponse {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::default_registry().gather(), &mut buf);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], buf)
}
