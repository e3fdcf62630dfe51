//! Where a batch's time goes: `lms_batch_stage_seconds{processor, stage}`, a histogram per
//! stage of the batch transaction, in the process's default registry (served on
//! `/metrics` by `lms processor run --listen`, read by `loadtest processors`).
//!
//! Stages of every store-backed processor ([`crate::stateful`]): `offsets` (advance, the
//! fencing compare-and-set), `admit` (the erasure check), `apply` (the processor's effects),
//! `outbox`, `gate` (waiting for the batch's dead letters), `commit`. Progress also splits
//! its `apply` into `apply.locks`, `apply.facts` (dedupe and fact upserts) and
//! `apply.recompute` (reading facts and catalog, computing and emitting figures).

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec};

/// The histogram; registered in the default registry on first use.
pub static STAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    let buckets = vec![0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
    let h = HistogramVec::new(
        HistogramOpts::new("lms_batch_stage_seconds", "Time per stage of a processor's batch transaction").buckets(buckets),
        &["processor", "stage"],
    )
    .expect("a valid histogram");
    // A second registration (two runtimes in one test process) finds it registered already.
    let _ = prometheus::default_registry().register(Box::new(h.clone()));
    h
});

/// Times consecutive stages: each [`Stages::mark`] records the time since the previous one.
pub struct Stages {
    processor: &'static str,
    last: Instant,
}

impl Stages {
    /// Starts timing the stages of `processor`'s batch.
    pub fn start(processor: &'static str) -> Stages {
        Stages { processor, last: Instant::now() }
    }

    /// Records the stage that just ended.
    pub fn mark(&mut self, stage: &str) {
        let now = Instant::now();
        STAGE_SECONDS.with_label_values(&[self.processor, stage]).observe(now.duration_since(self.last).as_secs_f64());
        self.last = now;
    }
}

/// (sum of seconds, count) per (processor, stage) so far, to diff around a measurement.
pub fn snapshot() -> std::collections::BTreeMap<(String, String), (f64, u64)> {
    use prometheus::core::Collector as _;
    let mut out = std::collections::BTreeMap::new();
    for family in STAGE_SECONDS.collect() {
        for m in family.get_metric() {
            let labels: Vec<&str> = m.get_label().iter().map(prometheus::proto::LabelPair::value).collect();
            if let [processor, stage] = labels[..] {
                let h = m.get_histogram();
                out.insert((processor.to_owned(), stage.to_owned()), (h.get_sample_sum(), h.get_sample_count()));
            }
        }
    }
    out
}
