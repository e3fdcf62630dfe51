//! Live emission: cohorts played back at a target rate with event times of the moment, so
//! that a dashboard's current buckets fill while one watches.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use lms_events::Event;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

use crate::rhythm::millis;
use crate::{Cohort, CohortConfig, ConfigError};

/// How often a batch is released.
const TICK: Duration = Duration::from_millis(100);

/// An endless, paced event stream.
///
/// It plays a cohort of the configuration (its weeks compressed to whatever the rate
/// gives) and, when it is exhausted, another one with new learners (prefix
/// `live<round>-<learner_prefix>`), forever. Catalog events are the configuration's, so
/// the courses are those of a [`Cohort`] of the same seed and tenants (re-publishing a
/// version changes nothing). Each event's time is set to the moment it is released; the
/// order of a learner's events is kept.
pub struct Live {
    config: CohortConfig,
    cohort: Cohort,
    round: u32,
    per_tick: f64,
    owed: f64,
    ticks: Option<tokio::time::Interval>,
    emitted: u64,
}

impl Live {
    /// A live stream of `events_per_second` events of `config`'s kind (its `now` is
    /// ignored).
    pub fn new(config: CohortConfig, events_per_second: f64) -> Result<Live, ConfigError> {
        if !(events_per_second.is_finite() && events_per_second > 0.0) {
            return Err(ConfigError::Rate(events_per_second.to_string()));
        }
        let cohort = Cohort::new(round_config(&config, 1))?;
        Ok(Live { config, cohort, round: 1, per_tick: events_per_second * TICK.as_secs_f64(), owed: 0.0, ticks: None, emitted: 0 })
    }

    /// Events released so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// The tenants and catalogs of the stream.
    pub fn tenants(&self) -> &[crate::Tenant] {
        self.cohort.tenants()
    }

    /// Waits for the next tick (every 100 ms) and returns the events due then, stamped with
    /// the current time. Never empty; cancel-safe (a cancelled wait releases nothing).
    pub async fn next_batch(&mut self) -> Vec<Event> {
        let ticks = self.ticks.get_or_insert_with(|| {
            let mut i = interval_at(Instant::now() + TICK, TICK);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        ticks.tick().await;
        self.owed += self.per_tick;
        let n = (self.owed.floor() as usize).max(1);
        self.owed = (self.owed - n as f64).max(0.0);
        let now = millis(Utc::now());
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n {
            match self.cohort.next() {
                Some(mut e) => {
                    e.time = now;
                    batch.push(e);
                }
                None => {
                    self.round += 1;
                    match Cohort::new(round_config(&self.config, self.round)) {
                        Ok(c) => self.cohort = c,
                        Err(_) => break,
                    }
                }
            }
        }
        self.emitted += batch.len() as u64;
        batch
    }
}

/// The configuration of round `round`: new learners, the same catalog.
fn round_config(config: &CohortConfig, round: u32) -> CohortConfig {
    CohortConfig {
        learner_prefix: format!("live{round}-{}", config.learner_prefix),
        learners: config.learners.max(1),
        now: millis(Utc::now()),
        ..config.clone()
    }
}

/// Feeds `sink` with batches of a [`Live`] stream at `events_per_second`, forever; stop it
/// by dropping the future (for example in a `tokio::select!` with a shutdown signal).
/// A slow sink slows the stream down rather than piling batches up. Fails only on an
/// invalid configuration or rate.
///
/// ```no_run
/// # async fn run() -> Result<(), lms_generator::ConfigError> {
/// use lms_generator::{CohortConfig, live};
/// let (tx, mut rx) = tokio::sync::mpsc::channel(16);
/// tokio::spawn(live(CohortConfig::new(42), 500.0, move |batch| {
///     let tx = tx.clone();
///     async move { let _ = tx.send(batch).await; }
/// }));
/// while let Some(batch) = rx.recv().await {
///     // Produce the batch, post it to the API, ...
///     # drop(batch);
/// }
/// # Ok(()) }
/// ```
pub async fn live<F, Fut>(config: CohortConfig, events_per_second: f64, mut sink: F) -> Result<(), ConfigError>
where
    F: FnMut(Vec<Event>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut stream = Live::new(config, events_per_second)?;
    loop {
        let batch = stream.next_batch().await;
        sink(batch).await;
    }
}
