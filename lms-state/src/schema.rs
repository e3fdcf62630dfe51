//! The state store's schema: migrations written once for both backends, each owned by the
//! crate or component whose tables it changes, applied as one history.
//!
//! Ownership of the tables (ARCHITECTURE.md, "State ownership"): this crate owns the offsets,
//! the outbox, the erased learners and the API's webhook and credential tables, and declares
//! their migrations ([`MIGRATIONS`], files in `lms-state/migrations/`). Each processor
//! component that keeps state declares its own, in its folder (`processors/src/<component>/migrations/`),
//! and `processors::state` hands them to [`crate::Store::open`], which adds this crate's and
//! runs them all in version order.
//!
//! Why one history and not one per owner: every database records the migrations, with each
//! one's checksum, in one `_sqlx_migrations` table, so every opener applies the whole list (a
//! partial one fails on a migrated database with sqlx's `VersionMissing`). Two released
//! migrations touch tables of another owner and stay as released (their checksums are in every
//! database): 0003 (achievements) also creates `learner_preferences`, which notifications owns,
//! and 0013 (this crate) gives `progress_seen` and `notification_payments` the learner column
//! erasure needs.
//!
//! The few dialect differences are tokens ([`DIALECT`]) rendered per backend. What a backend
//! runs for a released migration must never change; `processors::state` pins every released
//! checksum per backend, and loads a database migrated by an earlier build.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrationSource, MigrationType, Migrator};

use crate::{Backend, StoreError};

/// One migration, in the portable dialect every statement of the store follows (see the
/// crate documentation) plus the [`DIALECT`] tokens.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version; migrations run in version order, and a version is used once across owners.
    pub version: i64,
    /// What it does (recorded in `_sqlx_migrations.description`).
    pub description: &'static str,
    /// Who owns the tables it changes: `lms-state` or a processor component.
    pub owner: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// The tokens a migration uses where the backends differ: (token, PostgreSQL, SQLite).
pub const DIALECT: &[(&str, &str, &str)] =
    &[("{{serial_primary_key}}", "BIGSERIAL PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT"), ("{{bytes}}", "BYTEA", "BLOB")];

macro_rules! migration {
    ($version:literal, $file:literal, $description:literal) => {
        Migration::new($version, $description, "lms-state", include_str!(concat!("../migrations/", $file)))
    };
}

/// This crate's migrations, in version order (a test checks the order).
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_foundation.sql", "foundation"),
    migration!(11, "0011_webhook_deliveries.sql", "webhook deliveries"),
    migration!(12, "0012_credential_status.sql", "credential status"),
    // Also gives progress_seen and notification_payments the learner column erasure needs:
    // it runs after the components' migrations that create them (0002, 0004).
    migration!(13, "0013_learner_erasure.sql", "learner erasure"),
    migration!(14, "0014_outbox_trace_state.sql", "outbox trace state"),
];

impl Migration {
    /// A migration of `owner` (for the constant lists of each owner).
    pub const fn new(version: i64, description: &'static str, owner: &'static str, sql: &'static str) -> Migration {
        Migration { version, description, owner, sql }
    }

    /// The SQL `backend` runs.
    pub fn render(&self, backend: Backend) -> Cow<'static, str> {
        if !self.sql.contains("{{") {
            return Cow::Borrowed(self.sql);
        }
        let mut sql = self.sql.to_owned();
        for (token, postgres, sqlite) in DIALECT {
            sql = sql.replace(token, if backend == Backend::Postgres { postgres } else { sqlite });
        }
        Cow::Owned(sql)
    }

    /// The migration as sqlx runs and records it on `backend`.
    pub fn to_sqlx(&self, backend: Backend) -> sqlx::migrate::Migration {
        sqlx::migrate::Migration::new(self.version, Cow::Borrowed(self.description), MigrationType::Simple, self.render(backend), false)
    }
}

/// The whole history: [`MIGRATIONS`] and the components' `components`, in version order.
/// Fails when two migrations share a version.
pub fn history(components: &[Migration]) -> Result<Vec<Migration>, StoreError> {
    let mut all: Vec<Migration> = MIGRATIONS.iter().chain(components).copied().collect();
    all.sort_by_key(|m| m.version);
    if let Some(w) = all.windows(2).find(|w| w[0].version == w[1].version) {
        return Err(StoreError::Schema(format!("migration {} is declared by both {} and {}", w[0].version, w[0].owner, w[1].owner)));
    }
    Ok(all)
}

/// The migrator of `backend` for the whole history (see [`history`]).
pub(crate) async fn migrator(backend: Backend, components: &[Migration]) -> Result<Migrator, StoreError> {
    Ok(Migrator::new(Rendered(backend, history(components)?)).await?)
}

/// A history rendered for a backend, as sqlx resolves it.
#[derive(Debug)]
struct Rendered(Backend, Vec<Migration>);

impl MigrationSource<'static> for Rendered {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<sqlx::migrate::Migration>, BoxDynError>> + Send>> {
        let migrations = self.1.iter().map(|m| m.to_sqlx(self.0)).collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// For this crate's tests: stand-ins for the component tables that [`MIGRATIONS`] 0013
/// alters, so that this crate's history applies without the components (the real tables
/// come from `processors::state`).
#[cfg(test)]
pub(crate) const TEST_COMPONENT_TABLES: &[Migration] = &[Migration {
    version: 2,
    description: "test stand-ins for component tables",
    owner: "test",
    sql: "CREATE TABLE progress_seen (tenant TEXT NOT NULL);\n\
          CREATE TABLE notification_payments (tenant TEXT NOT NULL, learner_id TEXT NOT NULL);",
}];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_versions_increase_and_a_shared_version_is_refused() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version), "MIGRATIONS is in version order");
        let all = history(TEST_COMPONENT_TABLES).expect("distinct versions");
        assert_eq!(all.iter().map(|m| m.version).collect::<Vec<_>>(), [1, 2, 11, 12, 13, 14]);
        let clash = Migration { owner: "progress", ..MIGRATIONS[3] };
        let err = history(&[clash]).expect_err("version 13 twice");
        assert!(err.to_string().contains("migration 13 is declared by both"), "{err}");
    }
}
