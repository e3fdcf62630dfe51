//! The no-op processor: counts events per type and does nothing else. It measures what
//! the bus alone costs (the baseline of every processor benchmark) and shows the
//! pipeline moving in `lms demo`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use lms_bus::{Batch, ProcessError, Processor};

/// Counts events; no effects.
#[derive(Default)]
pub struct Noop {
    events: AtomicU64,
    by_type: Mutex<BTreeMap<&'static str, u64>>,
}

impl Noop {
    /// Events processed so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Events processed so far, per event type.
    pub fn by_type(&self) -> BTreeMap<&'static str, u64> {
        self.by_type.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Processor for Noop {
    fn name(&self) -> &str {
        "noop"
    }

    async fn process(&self, batch: &Batch) -> Result<(), ProcessError> {
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for r in &batch.records {
            *counts.entry(r.event.event_type().as_str()).or_default() += 1;
        }
        if let Ok(mut m) = self.by_type.lock() {
            for (t, n) in counts {
                *m.entry(t).or_default() += n;
            }
        }
        self.events.fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
