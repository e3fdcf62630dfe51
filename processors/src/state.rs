//! What the components keep in the state store, in one list ([`OWNERS`]): each component that
//! keeps state declares, in its folder (`<component>/state.rs`, the files in
//! `<component>/migrations/`), its migrations and how it forgets a learner.
//!
//! The runtime, the binary, the API and the tests open the store with [`open_store`], which
//! applies lms-state's migrations and every component's as one history (see
//! [`lms_state::schema`] for why it is one); [`crate::erasure::erase`] runs every component's
//! erasure in the transaction of an erasure.
//!
//! Adding a component that keeps state: its folder gets `migrations/` and a `state.rs` with
//! its `STATE`, and [`OWNERS`] gets that constant. A new migration takes the next free
//! version across all owners (a version used twice fails every open, and
//! `history_is_the_released_one` in CI).

use futures::future::BoxFuture;
use lms_state::schema::Migration;
use lms_state::{Store, StoreError, Tx};

use crate::{achievements, notifications, progress};

/// A component's part of the state store.
pub struct Owner {
    /// The component's name (its migrations carry it as their owner).
    pub name: &'static str,
    /// Its migrations, in version order.
    pub migrations: &'static [Migration],
    /// Deletes every row it holds of a learner (tenant, learner id) in the erasure's
    /// transaction, and counts them under the contract's kinds of data.
    pub erase: EraseLearner,
}

/// A component's erasure of one learner: `(tx, tenant, learner)`.
pub type EraseLearner = for<'a> fn(&'a mut Tx, &'a str, &'a str) -> BoxFuture<'a, Result<ErasedState, StoreError>>;

/// Every component that keeps state in the store. Not behind the `delivery` feature: the API
/// erases notifications' rows and migrates their tables without the delivery stack.
pub const OWNERS: &[Owner] = &[progress::state::STATE, achievements::state::STATE, notifications::state::STATE];

/// Every component's migrations; lms-state adds its own ([`lms_state::Store::migrate`]).
pub fn migrations() -> Vec<Migration> {
    OWNERS.iter().flat_map(|o| o.migrations).copied().collect()
}

/// Connects to the state store and applies the whole history (lms-state's and every
/// component's migrations). Every process that opens the store goes through here.
pub async fn open_store(url: &str, max_connections: u32) -> Result<Store, StoreError> {
    Store::open(url, max_connections, &migrations()).await
}

/// What one erasure did in the state store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    /// The learner was erased before (this erasure only removed what came in meanwhile,
    /// which is nothing unless an older processor wrote it).
    pub already_erased: bool,
    /// When the learner was first erased, µs since the epoch.
    pub erased_at_us: i64,
    /// The rows it removed.
    pub state: ErasedState,
}

// The kinds are those of CONTRACT.md's erasure answer (`state` of `DELETE
// /v1/learners/{learner_id}` is this type, and its doc comments are the OpenAPI
// descriptions); each owner counts its own rows.
/// Rows removed from the state store, per kind of data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErasedState {
    /// Contact data and notification preferences (0 or 1).
    pub preferences: u64,
    /// Inbox notifications.
    pub notifications: u64,
    /// Deliveries (pending and past) with their attempts, throttle counters, digests.
    pub deliveries: u64,
    /// Progress facts: completed lessons, course rows, completions.
    pub progress: u64,
    /// Achievements and the facts their rules read.
    pub achievements: u64,
    /// Dedupe rows of the learner's video reports.
    pub dedupe: u64,
    /// Issued Open Badges credentials, now revoked in the status list.
    pub credentials_revoked: u64,
}

impl std::ops::AddAssign for ErasedState {
    fn add_assign(&mut self, other: ErasedState) {
        self.preferences += other.preferences;
        self.notifications += other.notifications;
        self.deliveries += other.deliveries;
        self.progress += other.progress;
        self.achievements += other.achievements;
        self.dedupe += other.dedupe;
        self.credentials_revoked += other.credentials_revoked;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lms_state::Backend;

    /// The SHA-384 sqlx records for each released migration, per backend (PostgreSQL,
    /// SQLite; empty when the same): a database migrated by an older build refuses to start
    /// if the text changes. A new migration adds its line; a released one never changes, and
    /// keeps its version wherever its file lives.
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
        m.to_sqlx(backend).checksum.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn history_is_the_released_one() {
        let history = lms_state::schema::history(&migrations()).expect("no version is declared twice");
        // Every released migration is there, unchanged for both backends; nothing else is yet.
        assert_eq!(history.iter().map(|m| m.version).collect::<Vec<_>>(), RELEASED.iter().map(|r| r.0).collect::<Vec<_>>());
        for (m, (version, postgres, sqlite)) in history.iter().zip(RELEASED) {
            let sqlite = if sqlite.is_empty() { postgres } else { sqlite };
            assert_eq!(checksum(m, Backend::Postgres), *postgres, "migration {version} changed for PostgreSQL");
            assert_eq!(checksum(m, Backend::Sqlite), *sqlite, "migration {version} changed for SQLite");
            for backend in [Backend::Postgres, Backend::Sqlite] {
                assert!(!m.render(backend).contains("{{"), "migration {version} keeps a token for {backend:?}");
            }
        }
        // And the check can fail: one changed byte is caught.
        let edited = Migration { sql: "-- edited\n", ..history[1] };
        assert_ne!(checksum(&edited, Backend::Postgres), RELEASED[1].1);
    }

    #[test]
    fn each_component_declares_its_own_migrations_in_order() {
        for owner in OWNERS {
            assert!(!owner.migrations.is_empty(), "{} keeps state and declares no migration", owner.name);
            assert!(owner.migrations.iter().all(|m| m.owner == owner.name), "{}'s migrations name it as their owner", owner.name);
            assert!(owner.migrations.windows(2).all(|w| w[0].version < w[1].version), "{}'s migrations are in version order", owner.name);
        }
    }

    /// A database migrated by the build before the migrations moved to their components
    /// (`tests/fixtures/state-sqlite-v14.sql`: `lms migrate` of 6831121 on SQLite, dumped with
    /// Python's `sqlite3.iterdump`) opens with this build's history and applies nothing; a
    /// history that lacks one component's migrations is refused by it.
    #[tokio::test]
    async fn a_database_migrated_by_the_previous_build_opens() {
        use sqlx::Row as _;
        let dump = include_str!("../tests/fixtures/state-sqlite-v14.sql");
        let store = Store::connect("sqlite::memory:", 1).await.expect("connect");
        sqlx::raw_sql(dump).execute(store.pool()).await.expect("load the previous build's database");
        const RECORDED: &str = "SELECT CAST(COUNT(*) AS BIGINT), CAST(MAX(version) AS BIGINT) FROM _sqlx_migrations";
        let recorded = async |store: &Store| {
            let row = sqlx::query(RECORDED).fetch_one(store.pool()).await.expect("count");
            (row.get::<i64, _>(0), row.get::<i64, _>(1))
        };
        assert_eq!(recorded(&store).await, (13, 14));
        let partial: Vec<Migration> = OWNERS.iter().filter(|o| o.name != "achievements").flat_map(|o| o.migrations).copied().collect();
        let err = store.migrate(&partial).await.expect_err("a history without achievements' migrations");
        assert!(err.to_string().contains("migration 3"), "{err}");
        store.migrate(&migrations()).await.expect("this build's history applies to the previous build's database");
        assert_eq!(recorded(&store).await, (13, 14), "nothing new to apply");
        let mut tx = store.begin().await.expect("begin");
        let erased = crate::erasure::erase(&mut tx, store.backend(), "t", "l", 1).await.expect("every component's tables are there");
        assert!(!erased.already_erased);
        tx.commit().await.expect("commit");
    }
}
