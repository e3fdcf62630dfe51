//! The embedded twin (Parquet + DataFusion) and ClickHouse fed the same generated stream, in
//! the same batches with a redelivered one: every analytics endpoint must answer identically
//! in both, and as the oracle does; the twin must keep its answers across compaction and a
//! reopen of its directory.

use std::path::PathBuf;

use lms_analytics::{AnalyticsStore, ParquetConfig, ParquetStore};
use lms_events::Event;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tests::init_logs;

use crate::analytics_common::{Oracle, answers, assert_same, assert_substantial, fresh_clickhouse, generate, oracle_answers, queries};

const TENANTS: usize = 3;

/// A directory of this test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let base = std::env::var("LMS_TEST_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
        let dir = base.join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("test dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Random batch boundaries, and one batch delivered twice.
fn batches(events: &[Event], seed: u64) -> Vec<Vec<&Event>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let n = rng.random_range(1..=600).min(events.len() - i);
        out.push(events[i..i + n].iter().collect::<Vec<_>>());
        i += n;
    }
    let again = out[rng.random_range(0..out.len())].clone();
    out.push(again);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_parquet_twin_answers_as_clickhouse_and_the_oracle() {
    init_logs();
    let stream = generate(7, TENANTS, 40);
    let dir = TempDir::new("analytics-twin");
    let cfg = ParquetConfig { compact_after_files: 4, ..ParquetConfig::new(&dir.0) };
    let twin = ParquetStore::open(cfg.clone()).await.expect("open the twin");
    assert_eq!(twin.migrate().await.expect("migrate").applied, [lms_analytics::parquet::FORMAT_VERSION]);
    assert_eq!(twin.migrate().await.expect("migrate again").applied, Vec::<u32>::new());
    let ch = fresh_clickhouse("parity").await;
    for batch in batches(&stream.delivered, 11) {
        twin.insert(&batch).await.expect("twin insert");
        ch.insert(&batch).await.expect("clickhouse insert");
    }

    let q = queries(TENANTS);
    let expected = oracle_answers(&Oracle::new(&stream.distinct), &q);
    assert_substantial(&expected);
    let from_ch = answers(&ch, &q).await;
    let from_twin = answers(&twin, &q).await;
    assert_same("clickhouse", &from_ch, &expected);
    assert_same("twin", &from_twin, &from_ch);

    // Compaction to one file per table, and a fresh store over the same files.
    twin.compact().await.expect("compact");
    for table in std::fs::read_dir(&dir.0).expect("twin dir") {
        let table = table.expect("entry").path();
        if table.is_dir() {
            let files = std::fs::read_dir(&table).expect("table dir").count();
            assert!(files <= 1, "{} has {files} files after compaction", table.display());
        }
    }
    assert_same("twin after compaction", &answers(&twin, &q).await, &expected);
    drop(twin);
    let reopened = ParquetStore::open(cfg).await.expect("reopen the twin");
    reopened.ping().await.expect("ping");
    assert_same("twin reopened", &answers(&reopened, &q).await, &expected);

    // Erasure: one learner of each tenant leaves both stores; every answer then equals the
    // oracle of the stream without them, but for their payments, which revenue keeps.
    let mut erased: Vec<(String, String)> = Vec::new();
    for e in &stream.distinct {
        if let (true, Some(l)) = (e.event_type().is_learning_activity(), e.learner_id())
            && !erased.iter().any(|(t, _)| *t == e.tenant)
        {
            erased.push((e.tenant.clone(), l.to_owned()));
        }
    }
    assert_eq!(erased.len(), TENANTS);
    for (tenant, learner) in &erased {
        let removed = reopened.erase(tenant, learner).await.expect("twin erase");
        assert!(removed.values().sum::<u64>() > 0, "the twin held rows of {tenant}/{learner}: {removed:?}");
        let removed = ch.erase(tenant, learner).await.expect("clickhouse erase");
        assert!(removed.values().sum::<u64>() > 0, "ClickHouse held rows of {tenant}/{learner}: {removed:?}");
    }
    let pairs: Vec<(&str, &str)> = erased.iter().map(|(t, l)| (t.as_str(), l.as_str())).chain([("tenant-0", "nobody")]).collect();
    for store in [&reopened as &dyn AnalyticsStore, &ch] {
        let found = store.erased(&pairs).await.expect("erased");
        assert_eq!(found.len(), TENANTS, "{}: the erased learners and no other: {found:?}", store.kind());
    }
    let is_erased = |e: &Event| e.learner_id().is_some_and(|l| erased.iter().any(|(t, x)| *t == e.tenant && x == l));
    let remaining: Vec<Event> =
        stream.distinct.iter().filter_map(|e| if is_erased(e) { lms_analytics::anonymized_payment(e) } else { Some(e.clone()) }).collect();
    let expected = oracle_answers(&Oracle::new(&remaining), &q);
    assert_same("clickhouse after the erasure", &answers(&ch, &q).await, &expected);
    assert_same("twin after the erasure", &answers(&reopened, &q).await, &expected);
}
