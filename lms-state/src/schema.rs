//! The state store's migrations: one history, written once for both backends, each
//! migration tagged with the owner of the tables it changes.
//!
//! Ownership of the tables (ARCHITECTURE.md, "State ownership"): this crate owns the offsets,
//! the outbox, the erased learners and the API's webhook and credential tables; the
//! processor components own theirs (`progress` with its catalog, `achievements`,
//! `notifications`) and hold their queries. The history stays one ordered list: every
//! database records it, with each migration's checksum, in one `_sqlx_migrations` table, so
//! every opener applies the whole list (a partial one fails on a migrated database), and two
//! released migrations (0003, 0013) touch tables of several owners, so no owner's part
//! applies alone.
//!
//! The few dialect differences are tokens ([`DIALECT`]) rendered per backend. What a backend
//! runs for a released migration must never change; `checksums_of_released_migrations_are_pinned`
//! fails if it does.

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
    /// The version; migrations run in version order.
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
    ($version:literal, $file:literal, $description:literal, $owner:literal) => {
        Migration { version: $version, description: $description, owner: $owner, sql: include_str!(concat!("../migrations/", $file)) }
    };
}

/// Every migration, in version order (a test checks the order).
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_foundation.sql", "foundation", "lms-state"),
    migration!(2, "0002_progress.sql", "progress", "progress"),
    // Also creates learner_preferences, owned by notifications (see ARCHITECTURE.md).
    migration!(3, "0003_achievements.sql", "achievements", "achievements"),
    migration!(4, "0004_notifications.sql", "notifications", "notifications"),
    migration!(6, "0006_achievement_enrollments.sql", "achievement enrollments", "achievements"),
    migration!(7, "0007_notification_retention.sql", "notification retention", "notifications"),
    migration!(8, "0008_drop_notifications_digest_index.sql", "drop notifications digest index", "notifications"),
    migration!(9, "0009_progress_revision.sql", "progress revision", "progress"),
    migration!(10, "0010_catalog_retirements.sql", "catalog retirements", "progress"),
    migration!(11, "0011_webhook_deliveries.sql", "webhook deliveries", "lms-state"),
    migration!(12, "0012_credential_status.sql", "credential status", "lms-state"),
    // Also gives progress_seen and notification_payments the learner column erasure needs.
    migration!(13, "0013_learner_erasure.sql", "learner erasure", "lms-state"),
    migration!(14, "0014_outbox_trace_state.sql", "outbox trace state", "lms-state"),
];

impl Migration {
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
}

/// The migrator of `backend`.
pub(crate) async fn migrator(backend: Backend) -> Result<Migrator, StoreError> {
    Ok(Migrator::new(Rendered(backend)).await?)
}

/// [`MIGRATIONS`] rendered for a backend, as sqlx resolves them.
#[derive(Debug)]
struct Rendered(Backend);

impl MigrationSource<'static> for Rendered {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<sqlx::migrate::Migration>, BoxDynError>> + Send>> {
        let migrations = MIGRATIONS
            .iter()
            .map(|m| sqlx::migrate::Migration::new(m.version, Cow::Borrowed(m.description), MigrationType::Simple, m.render(self.0), false))
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SHA-384 sqlx records for each released migration, per backend (PostgreSQL,
    /// SQLite): a database migrated by an older build refuses to start if the text changes.
    /// A new migration adds its line; a released one never changes.
    const RELEASED: &[(i64, &str, &str)] = &[
        (
            1,
            "df1043944d11950dac89d6ee23a7bd461b30aeeb6716c8c6d22d68df743801102d587541aed57d2c469a8697702e70e2",
            "d3c59445991716a9526cf498c3314cdb7c7eafdf9ba170de4a4eecd8a30a0970bee3c20dd951153ea223379696e724ef",
        ),
        (2, "69c5162d5911aa5b378300db2f74df39f882e3d0509be34929f467cc99949a91de3205aa14df0678b2269fb404123dc6", ""),
        (3, "ade481ec558d5d8a9c3bacb1ca6d142274e1ebc64cf705ed115e1f6f86b35efd200a2b033475a1d5f09efb262ad00aaf", ""),
        (4, "e3b2afe8b62f5df74cdc6de76e77223b56b141d47e3d54a7218f8abb4511ac6ad23d7aaaa1eead3c4add9262db78b8bc", ""),
        (6, "d3852a49e97c32d288c01e989402e073186fc6d9129d3686e4ca5c2015b4fddbf894af62fd8f6d817f2a08aa9e7bb672", ""),
        (7, "a48364dc8b6887327c6ff24620811115d54132e88df6a2927008bb72560a08bc35931a1f81c4ecf8f5b8a96882d67cd2", ""),
        (8, "b8b931f6100d7013b08a32a0a10a8211023ee1a20d1c01813cac52c79b09f06ae7e3a8f85dc516c7aac3e6db95c5d8a1", ""),
        (9, "e95cdc8f1bc5eb2a2cb2e44ada4b3e7c71dc982ecc3684d727f801b4510b0153f4127f19456c3e65bde2b6e73548140c", ""),
        (10, "dd6b3f417eb663b061c426327aa7735c23ce29f5af6f89428654a32db09c7513a8bf889dbeab6025993b236b9c62736f", ""),
        (11, "7e263df76d6cf15ae2fe7b04ee2a24d31d0109781b0c758a66abcb96db3c8b4be20fad92acd2670e1044d74915a25552", ""),
        (12, "83e6feb3ab4d52decd076c40ac4e90ef4f5f15e5d059665e46dec3f72b126284174e19107ac15ee3e508f69490bf824c", ""),
        (13, "8ed981cbc8a24233b89b7d3a213e325ac35d6cfe5125b74f49ba30b7eb48a74e67fe79b3588cca0716c1d6ebed2d30a1", ""),
        (14, "f2bc56b610c42d52c97ccb06d16a8016857b93a831084db4a7e90e25746fe6230222e5ab6af0db7cca2ac3fb601f1549", ""),
    ];

    fn checksum(m: &Migration, backend: Backend) -> String {
        let m = sqlx::migrate::Migration::new(m.version, Cow::Borrowed(m.description), MigrationType::Simple, m.render(backend), false);
        m.checksum.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn checksums_of_released_migrations_are_pinned() {
        for (version, postgres, sqlite) in RELEASED {
            let m = MIGRATIONS.iter().find(|m| m.version == *version).expect("a released migration is never removed");
            let sqlite = if sqlite.is_empty() { postgres } else { sqlite };
            assert_eq!(checksum(m, Backend::Postgres), *postgres, "migration {version} changed for PostgreSQL");
            assert_eq!(checksum(m, Backend::Sqlite), *sqlite, "migration {version} changed for SQLite");
        }
        // And the check can fail: one changed byte is caught.
        let edited = Migration { sql: "-- edited\n", ..MIGRATIONS[1] };
        assert_ne!(checksum(&edited, Backend::Postgres), RELEASED[1].1);
    }

    #[test]
    fn versions_increase_and_every_token_is_rendered() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version), "MIGRATIONS is in version order");
        for m in MIGRATIONS {
            for backend in [Backend::Postgres, Backend::Sqlite] {
                assert!(!m.render(backend).contains("{{"), "migration {} keeps a token for {backend:?}", m.version);
            }
        }
        let owners = ["lms-state", "progress", "achievements", "notifications"];
        assert!(MIGRATIONS.iter().all(|m| owners.contains(&m.owner)), "owners are lms-state or a component");
    }
}
