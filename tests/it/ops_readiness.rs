//! A processor process's `/readyz` covers every store it writes to: with the analytics
//! processor running, ClickHouse going away turns it unready (naming the analytics store)
//! while liveness stays, and ClickHouse coming back makes it ready again.
//!
//! The outage is a TCP proxy in front of the real ClickHouse (see `tests::proxy`).

use std::time::Duration;

use tests::proxy::Proxy;
use tests::{eventually, free_port, init_logs, kafka_brokers, lms_env, spawn_lms, unique_prefix};

use crate::analytics_common::clickhouse_url;
use crate::support::fresh_postgres_db;

async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = http.get(url).timeout(Duration::from_secs(5)).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_readiness_follows_the_analytics_store() {
    init_logs();
    let prefix = unique_prefix("ops-readiness");
    let brokers = kafka_brokers();
    let upstream = reqwest::Url::parse(&clickhouse_url()).expect("clickhouse url");
    let proxy = Proxy::start(&format!("{}:{}", upstream.host_str().unwrap_or("127.0.0.1"), upstream.port().unwrap_or(8123))).await;
    let health = free_port();
    let mut env = lms_env(&brokers, &prefix, &fresh_postgres_db("ops_readiness").await, free_port(), "readiness-test");
    env.retain(|(k, _)| !k.starts_with("LMS_ANALYTICS__"));
    env.push(("LMS_ANALYTICS__STORE", "clickhouse".to_owned()));
    env.push(("LMS_ANALYTICS__URL", format!("http://{}", proxy.addr())));
    env.push(("LMS_ANALYTICS__DATABASE", format!("readiness_{}", &uuid::Uuid::new_v4().simple().to_string()[..10])));
    let mut processor =
        spawn_lms(&["processor", "run", "analytics", "--listen", &format!("127.0.0.1:{health}")], &env, &format!("{prefix}processor.log"));
    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{health}/readyz");
    let live = format!("http://127.0.0.1:{health}/livez");

    let body = eventually("ready with ClickHouse up", Duration::from_secs(60), || async {
        get(&http, &ready).await.filter(|(s, _)| *s == 200).map(|(_, b)| b)
    })
    .await;
    assert!(body.contains("analytics: ok"), "the report names the analytics store: {body}");

    proxy.cut();
    let body = eventually("unready with ClickHouse away", Duration::from_secs(30), || async {
        get(&http, &ready).await.filter(|(s, _)| *s == 503).map(|(_, b)| b)
    })
    .await;
    assert!(body.contains("analytics: ") && !body.contains("analytics: ok"), "the analytics store is the reason: {body}");
    assert!(body.contains("store: ok") && body.contains("broker: ok"), "the other dependencies are still fine: {body}");
    assert_eq!(get(&http, &live).await.map(|(s, _)| s), Some(200), "liveness does not depend on ClickHouse");
    assert!(processor.0.try_wait().expect("wait").is_none(), "the processor stays up");

    proxy.restore();
    eventually("ready again once ClickHouse is back", Duration::from_secs(30), || async {
        get(&http, &ready).await.filter(|(s, _)| *s == 200).map(|_| ())
    })
    .await;
}
