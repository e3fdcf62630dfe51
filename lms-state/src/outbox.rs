//! The transactional outbox: events a processor emits are written in the transaction of
//! the batch that caused them, and the [`Relay`] produces them to Kafka afterwards.
//!
//! Invariants:
//! - An event is in the outbox if and only if the effects that caused it committed.
//! - The relay deletes a row only after the broker acknowledged its record, so a crash
//!   in between produces it again on restart: delivery is at least once, and every
//!   consumer dedupes by event id (derived events that must be unique, such as
//!   `course.completed`, carry ids derived from what they are about).
//! - A relay that stays up never produces a row twice: rows the broker acknowledged but
//!   the database did not let it delete (store outage) are remembered, and their delete is
//!   retried before anything is read again.
//! - One relay at a time per database (a PostgreSQL session advisory lock; SQLite is one
//!   process), reading in `seq` order, so the records of one key keep their order.

use std::sync::Arc;
use std::time::Duration;

use lms_bus::{OnQueueFull, Producer};
use lms_events::{Event, TraceContext, codec};
use sqlx::Row as _;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::sql::{CHUNK_ROWS, list, lock_key, now_us, values};
use crate::{Backend, Store, StoreError, Tx};

/// Writes events to the outbox inside the caller's transaction.
pub async fn enqueue(tx: &mut Tx, events: &[(Event, Option<TraceContext>)]) -> Result<(), StoreError> {
    let now = now_us();
    for chunk in events.chunks(CHUNK_ROWS) {
        let sql = format!(
            "INSERT INTO outbox (event_id, payload, traceparent, tracestate, baggage, created_at_us) VALUES {}",
            values(chunk.len(), 6, 1)
        );
        let mut q = sqlx::query(&sql);
        for (event, trace) in chunk {
            q = q
                .bind(event.id.clone())
                .bind(codec::encode(event))
                .bind(trace.as_ref().map(TraceContext::to_traceparent))
                .bind(trace.as_ref().and_then(|t| t.state.as_deref()))
                .bind(trace.as_ref().and_then(|t| t.baggage.as_deref()))
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Rows waiting in the outbox (a gauge for operators and a condition for tests).
pub async fn pending(store: &Store) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM outbox").fetch_one(store.pool()).await?.try_get(0)?)
}

/// Tuning of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows read and produced per round.
    pub batch_rows: i64,
    /// How long to wait for new rows when the outbox is empty and nobody wakes the relay.
    pub idle_poll: Duration,
    /// Back-off after a failed round (broker or database unavailable), doubled up to `max_backoff`.
    pub backoff: Duration,
    /// Upper bound of the back-off.
    pub max_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_rows: 1000,
            idle_poll: Duration::from_millis(200),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Errors of one relay round.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Some records were not acknowledged by the broker; they stay in the outbox.
    #[error("{failed} of {total} outbox records were not acknowledged: {first}")]
    Produce {
        /// Records not acknowledged.
        failed: usize,
        /// Records of the round.
        total: usize,
        /// The first error.
        first: String,
    },
}

impl From<sqlx::Error> for RelayError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Db(e))
    }
}

/// Gives the relay lock up by closing its session. Returning the connection to the pool
/// would keep the session, and with it the lock, alive in the pool: no relay, this one
/// included, could take it again.
fn release(lock: Option<PoolConnection<Any>>) {
    if let Some(conn) = lock {
        drop(conn.detach());
    }
}

/// Produces outbox rows to Kafka and deletes them once acknowledged.
pub struct Relay {
    store: Store,
    producer: Arc<Producer>,
    wake: Arc<Notify>,
    config: RelayConfig,
    /// Rows the broker acknowledged whose delete has not succeeded yet.
    acked: Vec<i64>,
}

impl Relay {
    /// A relay for `store`'s outbox.
    pub fn new(store: Store, producer: Arc<Producer>, config: RelayConfig) -> Self {
        Self { store, producer, wake: Arc::new(Notify::new()), config, acked: Vec::new() }
    }

    /// Notify it after committing outbox rows, so they leave without waiting for the poll.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Relays until `shutdown`, then makes one last round so that what was committed
    /// before the shutdown leaves too.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = self.config.backoff;
        // PostgreSQL: only the holder of the relay lock relays; the lock lives as long as
        // its connection, so a crashed relay hands over as soon as its session ends.
        let mut lock: Option<PoolConnection<Any>> = None;
        loop {
            if shutdown.is_cancelled() {
                if (lock.is_some() || self.store.backend() == Backend::Sqlite)
                    && let Err(e) = self.drain_once().await
                {
                    tracing::warn!(error = %e, "outbox: last round before shutdown failed; rows stay for the next start");
                }
                release(lock);
                return;
            }
            if self.store.backend() == Backend::Postgres && lock.is_none() {
                match self.try_lock().await {
                    Ok(conn) => lock = conn,
                    Err(e) => tracing::warn!(error = %e, "outbox: cannot take the relay lock"),
                }
                if lock.is_none() {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(self.config.max_backoff.min(Duration::from_secs(1))) => {}
                    }
                    continue;
                }
            }
            match self.drain_once().await {
                Ok(0) => {
                    backoff = self.config.backoff;
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.config.idle_poll) => {}
                    }
                }
                Ok(_) => backoff = self.config.backoff,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox relay round failed");
                    if matches!(e, RelayError::Store(_)) {
                        // The lock's session may be gone with the database: take it again.
                        release(lock.take());
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }

    async fn try_lock(&self) -> Result<Option<PoolConnection<Any>>, StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        let key = lock_key("outbox-relay", &[]);
        let got: bool =
            sqlx::query("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn as &mut AnyConnection).await?.try_get(0)?;
        Ok(got.then_some(conn))
    }

    /// One round: finishes the deletes a failed round left, then reads up to `batch_rows`
    /// rows in order, produces them, deletes the acknowledged ones. Returns how many left
    /// the outbox.
    pub async fn drain_once(&mut self) -> Result<usize, RelayError> {
        if !self.acked.is_empty() {
            // Re-reading these rows would produce them again: delete them first.
            let left = self.acked.len();
            self.delete_acked().await?;
            tracing::info!(rows = left, "outbox: deleted rows acknowledged before the store failed");
        }
        let rows = sqlx::query("SELECT seq, payload, traceparent, tracestate, baggage FROM outbox ORDER BY seq LIMIT $1")
            .bind(self.config.batch_rows)
            .fetch_all(self.store.pool())
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut seqs = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        let mut undecodable = Vec::new();
        for row in rows {
            let seq: i64 = row.try_get(0)?;
            let payload: Vec<u8> = row.try_get(1)?;
            let trace: Option<String> = row.try_get(2)?;
            let (state, baggage): (Option<String>, Option<String>) = (row.try_get(3)?, row.try_get(4)?);
            let trace =
                trace.as_deref().and_then(TraceContext::parse_traceparent).map(|t| t.with_state(state.as_deref(), baggage.as_deref()));
            match codec::decode(&payload) {
                Ok(event) => {
                    seqs.push(seq);
                    events.push((event, trace));
                }
                Err(e) => {
                    // Only this code writes the outbox, so this is a bug; keeping the row
                    // would block the relay for ever.
                    tracing::error!(seq, error = %e, "outbox: dropping an undecodable row");
                    undecodable.push(seq);
                }
            }
        }
        let results = self.producer.send_events(&events, OnQueueFull::Wait(Duration::from_secs(30))).await;
        let mut done = undecodable;
        let mut first_error = None;
        let mut failed = 0;
        for (seq, r) in seqs.iter().zip(&results) {
            match r {
                Ok(_) => done.push(*seq),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        let left = done.len();
        self.acked = done;
        self.delete_acked().await?;
        match first_error {
            None => Ok(left),
            Some(first) => Err(RelayError::Produce { failed, total: seqs.len(), first }),
        }
    }

    /// Deletes the acknowledged rows, forgetting each chunk once its delete committed (a
    /// delete whose answer was lost is repeated harmlessly).
    async fn delete_acked(&mut self) -> Result<(), RelayError> {
        while !self.acked.is_empty() {
            let n = self.acked.len().min(CHUNK_ROWS * 4);
            let sql = format!("DELETE FROM outbox WHERE seq IN ({})", list(n, 1));
            let mut q = sqlx::query(&sql);
            for seq in &self.acked[..n] {
                q = q.bind(*seq);
            }
            q.execute(self.store.pool()).await?;
            self.acked.drain(..n);
        }
        Ok(())
    }
}
