//! Processor state: PostgreSQL in production, SQLite for the embedded default, through
//! one portable SQL dialect (sqlx's `Any` driver).
//!
//! - [`Store`]: connects by URL (`postgres://…`, `sqlite://<path>`, `sqlite::memory:`),
//!   applies the migrations ([`schema`]: this crate's and those the processor components
//!   declare for their tables, one history for both backends), and opens transactions.
//! - [`offsets`]: consumer offsets written in the transaction of a batch's effects, with
//!   a compare-and-set on the offsets the batch expected (this fences a member that lost
//!   its partitions), and the [`lms_bus::OffsetStore`] the runner seeks from.
//! - [`outbox`]: events a processor emits are written to the outbox in that same
//!   transaction; the [`outbox::Relay`] produces them to Kafka and deletes them once
//!   acknowledged (at least once; consumers dedupe by event id).
//! - [`erasure`]: erased learners (checked by every batch transaction), the record of an
//!   erasure and the revocation of the learner's credentials; each component removes its own
//!   rows of the learner (`processors::erasure`).
//! - [`webhooks`]: the payment webhooks the API accepted, so that any instance answers a
//!   redelivery without producing it again.
//! - [`sql`]: the few helpers that keep statements portable (placeholders, multi-row
//!   values, times as microseconds, course and learner locks).
//!
//! Portability rules every statement follows: `$n` placeholders (SQLite accepts them),
//! `ON CONFLICT … DO UPDATE/NOTHING`, `RETURNING`, integers as BIGINT, floats as DOUBLE
//! PRECISION (REAL on SQLite), times as BIGINT microseconds, no arrays, aggregates cast
//! to BIGINT where PostgreSQL would answer NUMERIC. SQLite runs with one connection, so
//! its transactions never conflict; PostgreSQL serialises what must be serialised with
//! row locks (offsets) and transaction-scoped advisory locks ([`sql::lock_keys`]).

pub mod credentials;
pub mod erasure;
pub mod offsets;
pub mod outbox;
pub mod schema;
pub mod sql;
pub mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};

/// A transaction on the store.
pub type Tx = Transaction<'static, Any>;

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (production).
    Postgres,
    /// SQLite (embedded default, single process).
    Sqlite,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported store URL {0:?}: expected postgres://…, sqlite://<path> or sqlite::memory:")]
    UnsupportedUrl(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The offsets a batch expected were not the stored ones: another member processed
    /// these partitions meanwhile.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Stored data could not be read back (a bug or a foreign write).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The migrations handed to [`Store::open`] do not form one history.
    #[error("schema: {0}")]
    Schema(String),
}

impl StoreError {
    /// True when retrying later may succeed (connection lost, deadlock, serialisation
    /// failure, timeouts): everything except bad data and fencing.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db(sqlx::Error::Database(e)) => {
                // SQLSTATE class 22 (data exception) and 23 (integrity violation) are the
                // batch's fault; 40 (rollback: deadlock, serialisation) and the rest are not.
                let code = e.code().unwrap_or_default();
                !(code.starts_with("22") || code.starts_with("23"))
            }
            Self::Db(_) => true,
            Self::Migrate(_) | Self::UnsupportedUrl(_) | Self::Fenced(_) | Self::Corrupt(_) | Self::Schema(_) => false,
        }
    }

    /// The bus's view of this error for a batch.
    pub fn into_process_error(self) -> lms_bus::ProcessError {
        match self {
            Self::Fenced(why) => lms_bus::ProcessError::Fenced(why),
            e if e.is_transient() => lms_bus::ProcessError::transient(e),
            e => lms_bus::ProcessError::permanent(e),
        }
    }
}

/// A connection pool to the state database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects. SQLite files are created when missing and run in WAL mode with one
    /// connection; PostgreSQL gets `max_connections` connections.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else if url == "sqlite::memory:" {
            (Backend::Sqlite, url.to_owned())
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let sep = if path.contains('?') { '&' } else { '?' };
            (Backend::Sqlite, if path.contains("mode=") { url.to_owned() } else { format!("{url}{sep}mode=rwc") })
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = match backend {
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(max_connections.max(2))
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await?
            }
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    // One connection for ever: an in-memory database lives as long as it.
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor as _;
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
        };
        Ok(Store { pool, backend })
    }

    /// Applies this crate's migrations ([`schema::MIGRATIONS`]) and the components' `components`
    /// (`processors::state::migrations()`), in version order, rendered for the backend;
    /// idempotent. The list must be the whole one: a migration this database recorded and
    /// the list lacks fails (sqlx's `VersionMissing`).
    pub async fn migrate(&self, components: &[schema::Migration]) -> Result<(), StoreError> {
        schema::migrator(self.backend, components).await?.run(&self.pool).await?;
        Ok(())
    }

    /// Connects and migrates (see [`Store::migrate`]); `processors::open_store` passes every
    /// component's migrations.
    pub async fn open(url: &str, max_connections: u32, components: &[schema::Migration]) -> Result<Store, StoreError> {
        let store = Store::connect(url, max_connections).await?;
        store.migrate(components).await?;
        Ok(store)
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// Readiness: one round trip.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the empty database `name` (letters, digits and `_`) on the PostgreSQL server of
/// `admin_url` and returns its URL: the same scheme, user and host, without options. For
/// tests and benchmarks that each want a database of their own.
pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(StoreError::Db(sqlx::Error::Configuration(format!("{name:?} is not a plain database name").into())));
    }
    let Some((scheme, rest)) = admin_url.split_once("://").filter(|(s, _)| s.starts_with("postgres")) else {
        return Err(StoreError::UnsupportedUrl(redact_url(admin_url)));
    };
    let admin = Store::connect(admin_url, 2).await?;
    let created = sqlx::query(&format!("CREATE DATABASE {name}")).execute(admin.pool()).await;
    admin.close().await;
    created?;
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    Ok(format!("{scheme}://{host}/{name}"))
}

/// A masked form of a store URL for logs and errors: no password, neither in the user
/// information nor as a `password=` (or `sslpassword=`) query parameter as libpq allows.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &base[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}://{}:***@{}", &base[..s], user, &base[at + 1..])
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://lms:secret@db:5432/lms"), "postgres://lms:***@db:5432/lms");
        assert_eq!(redact_url("sqlite://data/lms.db"), "sqlite://data/lms.db");
        assert_eq!(
            redact_url("postgresql://db/lms?user=lms&password=hunter2&sslmode=verify-full"),
            "postgresql://db/lms?user=lms&password=***&sslmode=verify-full"
        );
    }

    #[tokio::test]
    async fn sqlite_migrates_twice_and_refuses_unknown_urls() {
        let store = Store::open("sqlite::memory:", 1, schema::TEST_COMPONENT_TABLES).await.expect("open");
        store.migrate(schema::TEST_COMPONENT_TABLES).await.expect("second migrate is a no-op");
        store.ping().await.expect("ping");
        let err = Store::connect("mysql://lms:hunter2@x/db", 1).await.expect_err("mysql is not a store");
        assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
