//! The operations endpoints of a processor process: `/livez` (alias `/healthz`),
//! `/readyz` (broker, state store and every extra [`Check`] reachable) and `/metrics` (Prometheus text format),
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
use lms_state::Store;
use prometheus::{Encoder, IntGauge, TextEncoder};
use tokio_util::sync::CancellationToken;

/// A dependency `/readyz` checks besides the broker and the state store, as the components
/// name them in their `prepare` (the analytics store, the SMTP server when e-mail is on).
pub use processors::Check;

struct Health {
    store: Store,
    producer: Arc<Producer>,
    checks: Vec<Check>,
    ready: IntGauge,
}

/// Serves the endpoints on `listen` until `shutdown` is cancelled. Registers `lms_ready`
/// (1 when the last `/readyz` found the broker, the store and every check reachable) in the
/// default registry.
pub async fn serve(
    listen: SocketAddr,
    store: Store,
    producer: Arc<Producer>,
    checks: Vec<Check>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ready =
        IntGauge::new("lms_ready", "1 when the broker, the state store and the other dependencies answered the last readiness check.")?;
    prometheus::default_registry().register(Box::new(ready.clone()))?;
    let state = Arc::new(Health { store, producer, checks, ready });
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
    let broker = tokio::task::spawn_blocking(move || producer.broker_check(Duration::from_secs(2)))
        .await
        .unwrap_or_else(|e| Err(format!("the check failed: {e}")));
    let store = within(async { h.store.ping().await.map_err(|e| e.to_string()) }).await;
    let mut ok = broker.is_ok() && store.is_ok();
    let mut body =
        format!("broker: {}\nstore: {}\n", broker.err().unwrap_or_else(|| "ok".to_owned()), store.err().unwrap_or_else(|| "ok".to_owned()));
    for check in &h.checks {
        let result = within((check.probe)()).await;
        ok &= result.is_ok();
        body.push_str(&format!("{}: {}\n", check.name, result.err().unwrap_or_else(|| "ok".to_owned())));
    }
    h.ready.set(i64::from(ok));
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

/// A probe's answer, or "timed out" after two seconds.
async fn within(probe: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(Duration::from_secs(2), probe).await.unwrap_or_else(|_| Err("timed out".to_owned()))
}

async fn metrics() -> impl IntoResponse {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::default_registry().gather(), &mut buf);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], buf)
}
