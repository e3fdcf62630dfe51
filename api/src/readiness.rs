//! Readiness: whether the broker and the registered dependencies are reachable.
//!
//! A background task checks them every `readiness_interval_ms` and keeps the results;
//! `/readyz` only reads them, so a probe never costs a broker round trip. The write routes
//! read the broker's state too: while the broker is known to be unreachable they answer 503
//! at once instead of queueing records that cannot be delivered.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

/// A dependency `/readyz` checks, registered with [`crate::Api::readiness_check`].
#[async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    /// A short, stable name shown in `/readyz`, such as `postgres`.
    fn name(&self) -> &str;
    /// Ok when the dependency is usable; the error says why not.
    async fn check(&self) -> Result<(), String>;
}

/// A readiness check from a name and an async closure:
///
/// ```
/// let check = api::readiness_fn("store", || Box::pin(async { Ok(()) }));
/// assert_eq!(check.name(), "store");
/// ```
pub fn readiness_fn<F>(name: impl Into<String>, check: F) -> Box<dyn ReadinessCheck>
where
    F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
{
    Box::new(FnCheck { name: name.into(), check })
}

struct FnCheck<F> {
    name: String,
    check: F,
}

#[async_trait]
impl<F> ReadinessCheck for FnCheck<F>
where
    F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    async fn check(&self) -> Result<(), String> {
        (self.check)().await
    }
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The last results of the readiness checks.
pub(crate) struct Readiness {
    broker: AtomicU8,
    results: Mutex<Vec<(String, Result<(), String>)>>,
}

impl Readiness {
    pub(crate) fn new() -> Readiness {
        Readiness { broker: AtomicU8::new(UNKNOWN), results: Mutex::new(vec![("broker".to_owned(), Err("not checked yet".to_owned()))]) }
    }

    /// True when the last check found the broker reachable.
    pub(crate) fn broker_up(&self) -> bool {
        self.broker.load(Ordering::Relaxed) == UP
    }

    /// True when the last check found the broker unreachable (not before the first check).
    pub(crate) fn broker_down(&self) -> bool {
        self.broker.load(Ordering::Relaxed) == DOWN
    }

    /// Every check's last result, the broker first.
    pub(crate) fn results(&self) -> Vec<(String, Result<(), String>)> {
        self.results.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn store(&self, broker: bool, results: Vec<(String, Result<(), String>)>) {
        let before = self.broker.swap(if broker { UP } else { DOWN }, Ordering::Relaxed);
        if before != UP && broker {
            tracing::info!("broker reachable");
        } else if before != DOWN && !broker {
            tracing::warn!("broker unreachable: write requests are answered 503 until it is back");
        }
        *self.results.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = results;
    }
}

/// What the background task needs; it ends when the API's state is dropped.
pub(crate) struct Monitor {
    pub readiness: Weak<Readiness>,
    pub producer: Weak<crate::producer::ProducerSlot>,
    pub checks: Arc<Vec<Box<dyn ReadinessCheck>>>,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Monitor {
    /// Runs the checks until the API is dropped.
    pub(crate) async fn run(self) {
        loop {
            let Some(slot) = self.producer.upgrade() else { return };
            let producer = slot.get();
            drop(slot);
            let timeout = self.timeout;
            let broker = tokio::task::spawn_blocking(move || producer.broker_check(timeout))
                .await
                .unwrap_or_else(|e| Err(format!("the check failed: {e}")));
            let reachable = broker.is_ok();
            let mut results = vec![("broker".to_owned(), broker)];
            let outcomes = futures::future::join_all(self.checks.iter().map(|c| async move {
                let r = tokio::time::timeout(timeout, c.check())
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())));
                (c.name().to_owned(), r)
            }))
            .await;
            results.extend(outcomes);
            let Some(readiness) = self.readiness.upgrade() else { return };
            readiness.store(reachable, results);
            drop(readiness);
            tokio::time::sleep(self.interval).await;
        }
    }
}
