//! The ClickHouse store's schema handling: versioned, idempotent migrations and the
//! capability check for features newer servers have.

use lms_analytics::{AnalyticsStore, ClickHouseConfig, ClickHouseStore};
use tests::init_logs;

use crate::analytics_common::clickhouse_url;

fn config(test: &str) -> ClickHouseConfig {
    ClickHouseConfig::new(clickhouse_url(), format!("t_{test}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]))
}

#[tokio::test]
async fn analytics_migrations_are_versioned_and_idempotent() {
    init_logs();
    let store = ClickHouseStore::new(config("migrate")).expect("a store");
    let first = store.migrate().await.expect("first migration");
    assert_eq!(first.applied, [1, 2, 3]);
    assert_eq!(first.version, lms_analytics::clickhouse::SCHEMA_VERSION);
    let again = store.migrate().await.expect("second migration");
    assert!(again.applied.is_empty(), "nothing left to apply: {again:?}");
    // A second process migrating the same database concurrently is harmless too.
    let other = ClickHouseStore::new(store.config().clone()).expect("a store");
    let (a, b) = tokio::join!(store.migrate(), other.migrate());
    assert!(a.expect("a").applied.is_empty() && b.expect("b").applied.is_empty());
    let versions: Vec<u32> = store
        .client()
        .query("SELECT DISTINCT version FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .expect("recorded versions");
    assert_eq!(versions, [1, 2, 3]);
    let tables: Vec<String> = store
        .client()
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&store.config().database)
        .fetch_all()
        .await
        .expect("tables");
    for t in [
        "activity_daily",
        "attempts",
        "completions",
        "course_activity",
        "enrollments",
        "erased_learners",
        "events",
        "learner_progress",
        "payments",
        "progress",
        "schema_migrations",
    ] {
        assert!(tables.iter().any(|n| n == t), "table {t} missing from {tables:?}");
    }
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn analytics_raw_events_ttl_only_on_servers_that_support_it() {
    init_logs();
    let store = ClickHouseStore::new(ClickHouseConfig { raw_events_ttl_days: Some(30), ..config("ttl") }).expect("a store");
    let report = store.migrate().await.expect("migrate");
    let version = store.server_version().await.expect("version");
    let ddl: String = store.client().query("SHOW CREATE TABLE events").fetch_one().await.expect("ddl");
    if version >= (19, 6) {
        assert!(report.skipped.is_empty(), "{report:?}");
        assert!(ddl.contains("TTL"), "{ddl}");
    } else {
        assert_eq!(report.skipped.len(), 1, "{report:?}");
        assert!(report.skipped[0].contains("19.6"), "{report:?}");
        assert!(!ddl.contains("TTL"), "{ddl}");
    }
}

#[tokio::test]
async fn analytics_unreachable_clickhouse_is_an_error_not_a_hang() {
    let port = tests::free_port();
    let store = ClickHouseStore::new(ClickHouseConfig {
        request_timeout_ms: 2_000,
        ..ClickHouseConfig::new(format!("http://127.0.0.1:{port}"), "nothing")
    })
    .expect("a store");
    assert!(store.ping().await.is_err());
    let events = [lms_events::examples::event(lms_events::EventType::LessonCompleted)];
    let refs: Vec<&lms_events::Event> = events.iter().collect();
    assert!(store.insert(&refs).await.is_err());
}
