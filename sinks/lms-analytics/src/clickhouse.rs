//! The ClickHouse store: versioned migrations, one insert per table per batch, and one query
//! (or a few small ones) per endpoint.
//!
//! Everything here runs on ClickHouse 18.16, the oldest server we support and the one the tests
//! use. Newer servers allow better in places, noted where it matters:
//! - `DateTime64` (20.1+) would let times be one column instead of `time_us Int64`;
//! - column and table TTL (19.6+) can expire raw events: used when `raw_events_ttl_days` is set
//!   and the server is new enough ([`ClickHouseStore::migrate`] checks `version()`);
//! - `async_insert` (21.11+) batches small inserts server-side; the sink batches already;
//! - `LowCardinality(String)` (19.x+, experimental before) would shrink tenant, course and
//!   currency columns.
//!
//! Tables use `ReplacingMergeTree` so that merges drop duplicate rows, but no answer depends on
//! a merge having happened: every read is an aggregate that a duplicate row cannot change
//! (`uniqExact` of ids, `max`/`min` or `argMax(…, revision)` per key, or `GROUP BY id` before
//! summing), so `FINAL` is never needed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clickhouse::{Client, Row, RowOwned, RowRead};
use futures::future::try_join_all;
use lms_bus::Secret;
use lms_events::Event;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::compute::{self, CourseLearners};
use crate::query::{AtRiskParams, FunnelParams, Granularity, RevenueParams, ScoresParams, SeriesParams};
use crate::response::{ActiveLearnersPoint, AtRiskLearner, CompletionsPoint, EnrollmentsPoint, Funnel, RevenuePoint, Scores};
use crate::rows::{Facts, date_of, day_number};
use crate::store::{AnalyticsStore, MigrationReport, StoreError};

/// How to reach ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP or HTTPS URL of the server, such as `http://127.0.0.1:8123` or
    /// `https://clickhouse.example:8443`.
    pub url: String,
    /// The database of the analytics tables; `migrate` creates it.
    #[serde(default = "default_database")]
    pub database: String,
    /// User name; the server's default user when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Password of `user`; in a file, `password_file` (read by the binary at startup).
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file of the certificate authorities an `https://` server's certificate must chain
    /// to (only these); the Mozilla roots (webpki-roots) when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Compression of the data exchanged: `none` (the default: ClickHouse 18.16, the server the
    /// tests run, cannot send compressed blocks the way the client expects) or `lz4` (current
    /// servers; less traffic to a remote ClickHouse).
    #[serde(default)]
    pub compression: ClickHouseCompression,
    /// Longest time one request (an insert of one table, a query) may take.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Keep raw events (the `events` table) this many days, by event time; forever when absent.
    /// Needs ClickHouse 19.6 or newer (TTL); on older servers `migrate` skips it and says so.
    /// The rollups are kept forever either way.
    #[serde(default)]
    pub raw_events_ttl_days: Option<u32>,
}

/// `analytics.compression`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClickHouseCompression {
    /// Uncompressed.
    #[default]
    None,
    /// LZ4 blocks (ClickHouse's native compression over HTTP).
    Lz4,
}

fn default_database() -> String {
    "lms_analytics".to_owned()
}
fn default_request_timeout_ms() -> u64 {
    30_000
}

impl ClickHouseConfig {
    /// A configuration with defaults for everything but the URL and database.
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            database: database.into(),
            user: None,
            password: None,
            ca_file: None,
            compression: ClickHouseCompression::None,
            request_timeout_ms: default_request_timeout_ms(),
            raw_events_ttl_days: None,
        }
    }
}

/// An HTTP(S) client trusting only the certificate authorities of `ca_file`.
fn https_client_trusting(url: &str, ca_file: &Path) -> Result<Client, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let fail = |cause: String| StoreError::Config(format!("ClickHouse {url}: cannot use ca_file {}: {cause}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| fail(e.to_string()))? {
        roots.add(cert.map_err(|e| fail(e.to_string()))?).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no PEM certificate in it".to_owned()));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
    // The clickhouse crate's own defaults: its idle timeout stays under the server's 3 s.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build(https);
    Ok(Client::with_http_client(client))
}

/// One schema migration: statements run in order, then the version is recorded.
struct Migration {
    version: u32,
    name: &'static str,
    statements: &'static [&'static str],
}

/// Every migration, oldest first. Never edit a released one; add a new version. Statements
/// are idempotent (`IF NOT EXISTS`) so that two processes migrating at once are harmless.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "raw events and the rollups of the analytics endpoints",
        statements: &[
            // Every event as received; duplicates of an id collapse on merge.
            "CREATE TABLE IF NOT EXISTS events (
            tenant String, id String, event_type String, time_us Int64, day Int32,
            source String, subject String, learner_id String, course_id String, data String,
            ingested_at DateTime DEFAULT now()
        ) ENGINE = ReplacingMergeTree ORDER BY (tenant, id)",
            // Learners active per day and course (learning events): one row per key.
            "CREATE TABLE IF NOT EXISTS activity_daily (
            tenant String, day Int32, week Int32, month Int32, course_id String, learner_id String
        ) ENGINE = ReplacingMergeTree ORDER BY (tenant, day, course_id, learner_id)",
            // The latest learning event per learner and course; merges keep the latest.
            "CREATE TABLE IF NOT EXISTS course_activity (
            tenant String, course_id String, learner_id String, last_us Int64,
            ver UInt64 MATERIALIZED toUInt64(greatest(last_us, 0))
        ) ENGINE = ReplacingMergeTree(ver) ORDER BY (tenant, course_id, learner_id)",
            // Enrollment events; the key holds the id.
            "CREATE TABLE IF NOT EXISTS enrollments (
            tenant String, course_id String, learner_id String, id String,
            day Int32, week Int32, month Int32, dropped Int32, order_key Int64
        ) ENGINE = ReplacingMergeTree ORDER BY (tenant, course_id, learner_id, id)",
            // Completions per learner and course; merges keep the earliest.
            "CREATE TABLE IF NOT EXISTS completions (
            tenant String, course_id String, learner_id String, completed_us Int64,
            day Int32, week Int32, month Int32,
            ver UInt64 MATERIALIZED toUInt64(9223372036854775807 - greatest(completed_us, 0))
        ) ENGINE = ReplacingMergeTree(ver) ORDER BY (tenant, course_id, learner_id)",
            // The furthest progress per learner and course; merges keep the furthest.
            "CREATE TABLE IF NOT EXISTS progress (
            tenant String, course_id String, learner_id String, pct_tenths Int32,
            ver UInt32 MATERIALIZED toUInt32(greatest(pct_tenths, 0))
        ) ENGINE = ReplacingMergeTree(ver) ORDER BY (tenant, course_id, learner_id)",
            // Payments and refunds; the key holds the id.
            "CREATE TABLE IF NOT EXISTS payments (
            tenant String, payment_id String, id String, refund Int32,
            day Int32, week Int32, month Int32, amount_minor Int64, currency String, course_id String
        ) ENGINE = ReplacingMergeTree ORDER BY (tenant, payment_id, id)",
            // Graded attempts; the key holds the id.
            "CREATE TABLE IF NOT EXISTS attempts (
            tenant String, assessment_id String, learner_id String, id String, course_id String,
            day Int32, pct Float64
        ) ENGINE = ReplacingMergeTree ORDER BY (tenant, assessment_id, learner_id, id)",
        ],
    },
    Migration {
        version: 2,
        name: "progress and completions follow the latest revision of each learner's figures",
        statements: &[
            // The figures of each `progress.updated`; merges keep the largest revision, reads
            // take `argMax(…, revision)`. Replaces `progress` (the furthest percent) and
            // `completions` (the earliest completion), which could not take back what a late
            // course version took back: they are no longer written nor read, and can be dropped
            // once no member of an older version writes them.
            "CREATE TABLE IF NOT EXISTS learner_progress (
            tenant String, course_id String, learner_id String, revision UInt64,
            pct_tenths Int32, completed Int32, completed_us Int64,
            day Int32, week Int32, month Int32
        ) ENGINE = ReplacingMergeTree(revision) ORDER BY (tenant, course_id, learner_id)",
        ],
    },
    Migration {
        version: 3,
        name: "erased learners",
        statements: &[
            // Learners erased per tenant (`DELETE /v1/learners/{id}`): the sink drops their
            // events; their rows elsewhere are removed by mutations (`erase`).
            "CREATE TABLE IF NOT EXISTS erased_learners (
            tenant String, learner_id String, erased_us Int64
        ) ENGINE = ReplacingMergeTree ORDER BY (tenant, learner_id)",
        ],
    },
];

/// The schema version this build expects.
pub const SCHEMA_VERSION: u32 = 3;

/// The tables whose rows name a learner, which an erasure empties of the learner: every
/// table but `payments` (revenue keeps its totals) and the list itself. `progress` and
/// `completions` are no longer written but may hold rows of an older version.
const LEARNER_TABLES: [&str; 8] =
    ["events", "activity_daily", "course_activity", "enrollments", "completions", "progress", "learner_progress", "attempts"];

/// How long an erasure waits for its mutations to finish.
const MUTATION_DEADLINE: Duration = Duration::from_secs(300);

/// The analytics store on ClickHouse.
#[derive(Clone)]
pub struct ClickHouseStore {
    cfg: ClickHouseConfig,
    /// Without a database: for `CREATE DATABASE`.
    server: Client,
    /// With the analytics database.
    db: Client,
    timeout: Duration,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore").field("url", &self.cfg.url).field("database", &self.cfg.database).finish()
    }
}

impl ClickHouseStore {
    /// A store for `cfg`. Connects lazily: nothing is sent until the first call. Fails only
    /// when `ca_file` cannot be used.
    pub fn new(cfg: ClickHouseConfig) -> Result<Self, StoreError> {
        let base = match &cfg.ca_file {
            Some(ca) => https_client_trusting(&cfg.url, ca)?,
            None => Client::default(),
        };
        let compression = match cfg.compression {
            ClickHouseCompression::None => clickhouse::Compression::None,
            ClickHouseCompression::Lz4 => clickhouse::Compression::Lz4,
        };
        let mut server = base
            .with_url(&cfg.url)
            // ClickHouse 18.16 cannot answer RowBinaryWithNamesAndTypes nor, with compression,
            // send compressed blocks the way the client expects.
            .with_validation(false)
            .with_compression(compression);
        if let Some(user) = &cfg.user {
            server = server.with_user(user);
        }
        if let Some(password) = &cfg.password {
            server = server.with_password(password.expose());
        }
        let db = server.clone().with_database(&cfg.database);
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        Ok(Self { cfg, server, db, timeout })
    }

    /// The configuration.
    pub fn config(&self) -> &ClickHouseConfig {
        &self.cfg
    }

    /// The client of the analytics database, for tools and tests that run their own SQL.
    pub fn client(&self) -> &Client {
        &self.db
    }

    /// The server's version as (major, minor).
    pub async fn server_version(&self) -> Result<(u32, u32), StoreError> {
        let v: String = self.limit(self.server.query("SELECT version()").fetch_one::<String>()).await?;
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
    }

    async fn limit<T>(&self, f: impl Future<Output = clickhouse::error::Result<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Internal(format!("the ClickHouse request took longer than {} ms", self.timeout.as_millis()))),
        }
    }

    /// What the unfinished mutations of the database are and, where the server says it, why
    /// they fail (`latest_fail_reason`; ClickHouse 18.16 has no such column: then the commands
    /// alone).
    async fn pending_mutations(&self) -> String {
        #[derive(Row, Deserialize)]
        struct Pending {
            table: String,
            command: String,
            reason: String,
        }
        let with_reason = "SELECT table, command, latest_fail_reason AS reason FROM system.mutations \
                           WHERE database = currentDatabase() AND is_done = 0";
        let without = "SELECT table, command, '' AS reason FROM system.mutations WHERE database = currentDatabase() AND is_done = 0";
        let rows = match self.fetch::<Pending>(self.db.query(with_reason)).await {
            Ok(rows) => rows,
            Err(_) => match self.fetch::<Pending>(self.db.query(without)).await {
                Ok(rows) => rows,
                Err(e) => return format!("(system.mutations unreadable: {e})"),
            },
        };
        let shown: Vec<String> = rows
            .iter()
            .map(|p| {
                if p.reason.is_empty() {
                    format!("{}: {}", p.table, p.command)
                } else {
                    format!("{}: {} (failing: {})", p.table, p.command, p.reason)
                }
            })
            .collect();
        shown.join("; ")
    }

    async fn fetch<T: RowOwned + RowRead>(&self, q: clickhouse::query::Query) -> Result<Vec<T>, StoreError> {
        self.limit(q.fetch_all::<T>()).await
    }

    async fn insert_rows<T>(&self, table: &str, rows: &[T]) -> Result<(), StoreError>
    where
        T: Row + for<'a> clickhouse::RowWrite<Value<'a> = T> + Serialize,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let work = async {
            let mut insert = self.db.insert::<T>(table).await?.with_timeouts(Some(self.timeout), Some(self.timeout));
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        };
        self.limit(work).await
    }

    async fn applied_versions(&self) -> Result<Vec<u32>, StoreError> {
        #[derive(Row, Deserialize)]
        struct V {
            version: u32,
        }
        let rows: Vec<V> = self.fetch(self.db.query("SELECT DISTINCT version FROM schema_migrations ORDER BY version")).await?;
        Ok(rows.into_iter().map(|v| v.version).collect())
    }

    async fn course_learners(&self, tenant: &str, course: &str) -> Result<CourseLearners, StoreError> {
        #[derive(Row, Deserialize)]
        struct KeyRow {
            learner_id: String,
            value: i64,
        }
        #[derive(Row, Deserialize)]
        struct ProgressRow {
            learner_id: String,
            pct_tenths: i32,
            completed: i32,
        }
        let q = |sql: &str| self.db.query(sql).bind(tenant).bind(course);
        let (enrolled, active, progress) = futures::try_join!(
            self.fetch::<KeyRow>(q("SELECT learner_id, max(order_key) FROM enrollments
                WHERE tenant = ? AND course_id = ? GROUP BY learner_id")),
            self.fetch::<KeyRow>(q("SELECT learner_id, max(last_us) FROM course_activity
                WHERE tenant = ? AND course_id = ? GROUP BY learner_id")),
            // The figures of the largest revision (rows of one revision are copies).
            self.fetch::<ProgressRow>(q("SELECT learner_id, argMax(pct_tenths, revision), argMax(completed, revision)
                FROM learner_progress WHERE tenant = ? AND course_id = ? GROUP BY learner_id")),
        )?;
        let mut c = CourseLearners::default();
        enrolled.into_iter().for_each(|r| c.enrollment(r.learner_id, r.value));
        active.into_iter().for_each(|r| c.activity(r.learner_id, r.value));
        progress.into_iter().for_each(|r| c.progress(r.learner_id, r.pct_tenths, r.completed == 1));
        Ok(c)
    }
}

/// The bucket column of a granularity (every dated table has `day`, `week` and `month`).
fn bucket_column(g: Granularity) -> &'static str {
    match g {
        Granularity::Day => "day",
        Granularity::Week => "week",
        Granularity::Month => "month",
    }
}

#[derive(Row, Deserialize)]
struct CountRow {
    bucket: i32,
    n: u64,
}

#[async_trait]
impl AnalyticsStore for ClickHouseStore {
    fn kind(&self) -> &'static str {
        "clickhouse"
    }

    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let create_db = format!("CREATE DATABASE IF NOT EXISTS `{}`", self.cfg.database.replace('`', ""));
        self.limit(self.server.query(&create_db).execute()).await?;
        self.limit(
            self.db
                .query(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                        version UInt32, name String, applied_at DateTime DEFAULT now()
                    ) ENGINE = ReplacingMergeTree ORDER BY version",
                )
                .execute(),
        )
        .await?;
        let done = self.applied_versions().await?;
        if let Some(newer) = done.iter().copied().find(|v| *v > SCHEMA_VERSION) {
            return Err(StoreError::Schema(format!("the database is at schema version {newer}, newer than this build's {SCHEMA_VERSION}")));
        }
        let mut report = MigrationReport::default();
        for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
            for statement in m.statements {
                self.limit(self.db.query(statement).execute()).await?;
            }
            self.limit(self.db.query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)").bind(m.version).bind(m.name).execute())
                .await?;
            info!(version = m.version, name = m.name, "applied analytics migration");
            report.applied.push(m.version);
        }
        report.version = SCHEMA_VERSION;
        if let Some(days) = self.cfg.raw_events_ttl_days {
            let (major, minor) = self.server_version().await?;
            if (major, minor) >= (19, 6) {
                let ttl = format!("ALTER TABLE events MODIFY TTL toDate('1970-01-01') + day + INTERVAL {days} DAY");
                self.limit(self.db.query(&ttl).execute()).await?;
            } else {
                let why = format!(
                    "raw_events_ttl_days needs ClickHouse 19.6 or newer for TTL; the server is {major}.{minor}, so raw events are kept"
                );
                warn!(major, minor, "raw events TTL skipped: the server is too old");
                report.skipped.push(why);
            }
        }
        Ok(report)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let one: u8 = self.limit(self.db.query("SELECT toUInt8(1)").fetch_one::<u8>()).await?;
        debug_assert_eq!(one, 1);
        Ok(())
    }

    async fn insert(&self, events: &[&Event]) -> Result<(), StoreError> {
        let f = Facts::from_events(events.iter().copied());
        if f.is_empty() {
            return Ok(());
        }
        // One INSERT per table, concurrently. A failure anywhere fails the batch, which the
        // sink retries whole: rows already written are harmless duplicates.
        let inserts: Vec<std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>>> = vec![
            Box::pin(self.insert_rows("events", &f.events)),
            Box::pin(self.insert_rows("activity_daily", &f.activity_daily)),
            Box::pin(self.insert_rows("course_activity", &f.course_activity)),
            Box::pin(self.insert_rows("enrollments", &f.enrollments)),
            Box::pin(self.insert_rows("learner_progress", &f.learner_progress)),
            Box::pin(self.insert_rows("payments", &f.payments)),
            Box::pin(self.insert_rows("attempts", &f.attempts)),
        ];
        try_join_all(inserts).await?;
        Ok(())
    }

    async fn erase(&self, tenant: &str, learner: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let now = chrono::Utc::now().timestamp_micros();
        self.limit(
            self.db
                .query("INSERT INTO erased_learners (tenant, learner_id, erased_us) VALUES (?, ?, ?)")
                .bind(tenant)
                .bind(learner)
                .bind(now)
                .execute(),
        )
        .await?;
        let mut removed = BTreeMap::new();
        for table in LEARNER_TABLES {
            let count = format!("SELECT count() FROM {table} WHERE tenant = ? AND learner_id = ?");
            let n: u64 = self.limit(self.db.query(&count).bind(tenant).bind(learner).fetch_one::<u64>()).await?;
            if n > 0 {
                // A mutation: ClickHouse 18.16 has no DELETE statement; 22.8 and newer could
                // use a lightweight `DELETE FROM`, and 20.x `mutations_sync = 2` instead of
                // the wait below.
                let delete = format!("ALTER TABLE {table} DELETE WHERE tenant = ? AND learner_id = ?");
                self.limit(self.db.query(&delete).bind(tenant).bind(learner).execute()).await?;
            }
            removed.insert(table.to_owned(), n);
        }
        // Mutations run in the background: the erasure is done when none is left.
        let deadline = std::time::Instant::now() + MUTATION_DEADLINE;
        loop {
            let pending: u64 = self
                .limit(
                    self.db
                        .query("SELECT count() FROM system.mutations WHERE database = currentDatabase() AND is_done = 0")
                        .fetch_one::<u64>(),
                )
                .await?;
            if pending == 0 {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(StoreError::Internal(format!(
                    "{pending} ClickHouse mutations still running after {} s; they finish in the background: {}",
                    MUTATION_DEADLINE.as_secs(),
                    self.pending_mutations().await
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        info!(tables = removed.len(), rows = removed.values().sum::<u64>(), "learner erased in ClickHouse");
        Ok(removed)
    }

    async fn erased(&self, learners: &[(&str, &str)]) -> Result<HashSet<(String, String)>, StoreError> {
        let mut by_tenant: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tenant, learner) in learners {
            by_tenant.entry(tenant).or_default().push(learner);
        }
        let mut found = HashSet::new();
        for (tenant, mut ids) in by_tenant {
            ids.sort_unstable();
            ids.dedup();
            let q = self
                .db
                .query("SELECT DISTINCT learner_id FROM erased_learners WHERE tenant = ? AND has(?, learner_id)")
                .bind(tenant)
                .bind(&ids);
            #[derive(Row, Deserialize)]
            struct R {
                learner_id: String,
            }
            let rows: Vec<R> = self.fetch(q).await?;
            found.extend(rows.into_iter().map(|r| (tenant.to_owned(), r.learner_id)));
        }
        Ok(found)
    }

    async fn active_learners(&self, p: &SeriesParams) -> Result<Vec<ActiveLearnersPoint>, StoreError> {
        let b = bucket_column(p.granularity);
        let course = if p.course_id.is_some() { "AND course_id = ?" } else { "" };
        let sql = format!(
            "SELECT {b} AS bucket, uniqExact(learner_id) AS n FROM activity_daily
             WHERE tenant = ? AND day >= ? AND day <= ? {course}
             GROUP BY bucket ORDER BY bucket"
        );
        let mut q = self.db.query(&sql).bind(&p.tenant).bind(day_number(p.from)).bind(day_number(p.to));
        if let Some(c) = &p.course_id {
            q = q.bind(c);
        }
        let rows: Vec<CountRow> = self.fetch(q).await?;
        Ok(rows.into_iter().map(|r| ActiveLearnersPoint { bucket: date_of(r.bucket), active_learners: r.n }).collect())
    }

    async fn enrollments(&self, p: &SeriesParams) -> Result<Vec<EnrollmentsPoint>, StoreError> {
        #[derive(Row, Deserialize)]
        struct R {
            bucket: i32,
            created: u64,
            dropped: u64,
        }
        let b = bucket_column(p.granularity);
        let course = if p.course_id.is_some() { "AND course_id = ?" } else { "" };
        let sql = format!(
            "SELECT {b} AS bucket, uniqExactIf(id, dropped = 0) AS created, uniqExactIf(id, dropped = 1) AS drops
             FROM enrollments WHERE tenant = ? AND day >= ? AND day <= ? {course}
             GROUP BY bucket ORDER BY bucket"
        );
        let mut q = self.db.query(&sql).bind(&p.tenant).bind(day_number(p.from)).bind(day_number(p.to));
        if let Some(c) = &p.course_id {
            q = q.bind(c);
        }
        let rows: Vec<R> = self.fetch(q).await?;
        Ok(rows.into_iter().map(|r| EnrollmentsPoint { bucket: date_of(r.bucket), enrollments: r.created, drops: r.dropped }).collect())
    }

    async fn completions(&self, p: &SeriesParams) -> Result<Vec<CompletionsPoint>, StoreError> {
        let b = bucket_column(p.granularity);
        let course = if p.course_id.is_some() { "AND course_id = ?" } else { "" };
        // The completion of the largest revision per learner and course (rows of one
        // revision are copies of one event). The aliases differ from the columns: 18.16
        // would substitute an alias named like a column inside the aggregates.
        let sql = format!(
            "SELECT l_{b} AS bucket, count() AS n FROM (
                SELECT course_id, learner_id, argMax(completed, revision) AS l_completed,
                       argMax(day, revision) AS l_day, argMax(week, revision) AS l_week,
                       argMax(month, revision) AS l_month
                FROM learner_progress WHERE tenant = ? {course} GROUP BY course_id, learner_id
             ) WHERE l_completed = 1 AND l_day >= ? AND l_day <= ?
             GROUP BY bucket ORDER BY bucket"
        );
        let mut q = self.db.query(&sql).bind(&p.tenant);
        if let Some(c) = &p.course_id {
            q = q.bind(c);
        }
        let q = q.bind(day_number(p.from)).bind(day_number(p.to));
        let rows: Vec<CountRow> = self.fetch(q).await?;
        Ok(rows.into_iter().map(|r| CompletionsPoint { bucket: date_of(r.bucket), completions: r.n }).collect())
    }

    async fn funnel(&self, p: &FunnelParams) -> Result<Funnel, StoreError> {
        Ok(self.course_learners(&p.tenant, &p.course_id).await?.funnel())
    }

    async fn revenue(&self, p: &RevenueParams) -> Result<Vec<RevenuePoint>, StoreError> {
        #[derive(Row, Deserialize)]
        struct R {
            bucket: i32,
            currency: String,
            gross: i64,
            refunds: i64,
        }
        let s = &p.series;
        let b = bucket_column(s.granularity);
        let currency = if p.currency.is_some() { "AND currency = ?" } else { "" };
        let course = if s.course_id.is_some() { "AND course = ?" } else { "" };
        // Payments deduplicated by id; refunds deduplicated by id and given the currency and
        // course of the payment they refund (refunds of payments not seen yet count once the
        // payment arrives).
        let sql = format!(
            "SELECT bucket, currency, sum(gross) AS gross, sum(refunds) AS refunds FROM (
                SELECT p_{b} AS bucket, p_currency AS currency, p_amount AS gross, toInt64(0) AS refunds,
                       p_course AS course
                FROM (
                    SELECT id, min(day) AS p_day, min(week) AS p_week, min(month) AS p_month,
                           min(amount_minor) AS p_amount, min(currency) AS p_currency, min(course_id) AS p_course
                    FROM payments WHERE tenant = ? AND refund = 0 AND day >= ? AND day <= ? GROUP BY id
                )
                UNION ALL
                SELECT r_bucket AS bucket, currency, toInt64(0) AS gross, r_amount AS refunds, course FROM (
                    SELECT payment_id, r_{b} AS r_bucket, r_amount FROM (
                        SELECT id, payment_id, min(day) AS r_day, min(week) AS r_week, min(month) AS r_month,
                               min(amount_minor) AS r_amount
                        FROM payments WHERE tenant = ? AND refund = 1 AND day >= ? AND day <= ?
                        GROUP BY id, payment_id
                    )
                ) ALL INNER JOIN (
                    SELECT payment_id, min(currency) AS currency, min(course_id) AS course
                    FROM payments WHERE tenant = ? AND refund = 0 GROUP BY payment_id
                ) USING payment_id
             ) WHERE 1 {currency} {course}
             GROUP BY bucket, currency ORDER BY bucket, currency"
        );
        let (from, to) = (day_number(s.from), day_number(s.to));
        let mut q = self.db.query(&sql).bind(&s.tenant).bind(from).bind(to).bind(&s.tenant).bind(from).bind(to).bind(&s.tenant);
        if let Some(c) = &p.currency {
            q = q.bind(c);
        }
        if let Some(c) = &s.course_id {
            q = q.bind(c);
        }
        let rows: Vec<R> = self.fetch(q).await?;
        Ok(rows
            .into_iter()
            .map(|r| RevenuePoint {
                bucket: date_of(r.bucket),
                currency: r.currency,
                gross_minor: r.gross,
                refunds_minor: r.refunds,
                net_minor: r.gross - r.refunds,
            })
            .collect())
    }

    async fn scores(&self, p: &ScoresParams) -> Result<Scores, StoreError> {
        #[derive(Row, Deserialize)]
        struct Best {
            best: f64,
        }
        let mut filter = String::from("tenant = ? AND assessment_id = ?");
        if p.range.is_some() {
            filter.push_str(" AND day >= ? AND day <= ?");
        }
        if p.course_id.is_some() {
            filter.push_str(" AND course_id = ?");
        }
        let bind = |mut q: clickhouse::query::Query| {
            q = q.bind(&p.tenant).bind(&p.assessment_id);
            if let Some((from, to)) = p.range {
                q = q.bind(day_number(from)).bind(day_number(to));
            }
            if let Some(c) = &p.course_id {
                q = q.bind(c);
            }
            q
        };
        let attempts_sql = format!("SELECT uniqExact(id) FROM attempts WHERE {filter}");
        let best_sql = format!("SELECT max(pct) AS best FROM attempts WHERE {filter} GROUP BY learner_id");
        let (attempts, best) = futures::try_join!(
            self.limit(bind(self.db.query(&attempts_sql)).fetch_one::<u64>()),
            self.fetch::<Best>(bind(self.db.query(&best_sql))),
        )?;
        Ok(compute::scores(attempts, best.into_iter().map(|b| b.best).collect()))
    }

    async fn at_risk(&self, p: &AtRiskParams) -> Result<Vec<AtRiskLearner>, StoreError> {
        Ok(self.course_learners(&p.tenant, &p.course_id).await?.at_risk(p))
    }
}
