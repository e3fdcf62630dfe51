//! The API's producer, replaced when it can no longer deliver.
//!
//! After a record times out, an idempotent producer must bump its epoch before it may
//! produce again (KIP-360). A broker that mishandles that (tansu 0.6.0's SQLite engine
//! answers every later produce of that producer with an unknown server error), or a fatal
//! idempotence error, leaves the producer unusable while the broker itself is fine. So
//! after any delivery failure the producer is marked suspect, and the first request after
//! readiness sees the broker reachable again replaces it with a fresh one from the factory
//! (a new producer id). Requests that still hold the old producer finish with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use lms_bus::{BusError, Producer};

/// Builds a producer: given to [`crate::Api::producer_factory`].
pub type ProducerFactory = Box<dyn Fn() -> Result<Producer, BusError> + Send + Sync>;

/// The current producer and how to replace it.
pub(crate) struct ProducerSlot {
    current: RwLock<Arc<Producer>>,
    factory: Option<ProducerFactory>,
    suspect: AtomicBool,
}

impl ProducerSlot {
    pub(crate) fn new(producer: Arc<Producer>, factory: Option<ProducerFactory>) -> ProducerSlot {
        ProducerSlot { current: RwLock::new(producer), factory, suspect: AtomicBool::new(false) }
    }

    /// The producer to use now.
    pub(crate) fn get(&self) -> Arc<Producer> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Notes that a record could not be delivered.
    pub(crate) fn mark_suspect(&self) {
        if self.factory.is_some() {
            self.suspect.store(true, Ordering::Relaxed);
        }
    }

    /// Replaces a suspect producer by a fresh one (only one caller does it).
    pub(crate) fn renew_if_suspect(&self) {
        let Some(factory) = &self.factory else { return };
        if !self.suspect.swap(false, Ordering::AcqRel) {
            return;
        }
        match factory() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner), Arc::new(fresh));
                tracing::info!("producer replaced after delivery failures");
                // Dropping a producer flushes what it still holds: off the async workers.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => {
                tracing::warn!(error = %e, "a new producer could not be built; keeping the old one");
                self.suspect.store(true, Ordering::Relaxed);
            }
        }
    }
}
