//! `lms api` exports every consumer group's lag computed from its offsets and the log
//! ends (`lms_group_lag_records`), so the lag is seen when no member is alive: the
//! progress group catches up, its only member is killed, more events arrive, and the
//! gauge rises from zero while no member reports anything.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{BusFixture, eventually, free_port, init_logs, kafka_brokers, lms_env, spawn_lms};

use crate::api_support::{SECRET, token};
use crate::support::fresh_postgres_db;

fn enrollments(from: usize, n: usize) -> Vec<Value> {
    (from..from + n)
        .map(|l| {
            let learner = format!("learner-{l:03}");
            json!({"specversion": "1.0", "id": format!("lag-enr-{l}"), "type": "enrollment.created", "source": "t",
                "time": "2026-11-02T00:00:00Z", "subject": learner, "data": {"learner_id": learner, "course_id": "c", "source": "self"}})
        })
        .collect()
}

/// The sum of `lms_group_lag_records` over the partitions of `group`, if it has series.
fn group_lag(metrics: &str, group: &str) -> Option<i64> {
    let prefix = format!("lms_group_lag_records{{group=\"{group}\",");
    let values: Vec<i64> = metrics.lines().filter(|l| l.starts_with(&prefix)).filter_map(|l| l.rsplit(' ').next()?.parse().ok()).collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauge_rises_while_every_member_of_a_group_is_stopped() {
    init_logs();
    let brokers = kafka_brokers();
    let BusFixture { prefix, .. } = BusFixture::fresh(&brokers, "ops-lag", 2).await;
    let url = fresh_postgres_db("ops_lag").await;
    let port = free_port();
    let mut env = lms_env(&brokers, &prefix, &url, port, SECRET);
    env.push(("LMS_API__LAG_REFRESH_S", "1".to_owned()));
    let _api = spawn_lms(&["api"], &env, &format!("{prefix}api.log"));
    let mut member = spawn_lms(&["processor", "run", "catalog", "progress"], &env, &format!("{prefix}progress.log"));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    eventually("the API is ready", Duration::from_secs(60), || async {
        (http.get(format!("{base}/readyz")).send().await.ok()?.status() == 200).then_some(())
    })
    .await;
    let writer = token("events:write");
    let send = async |events: Vec<Value>| {
        let n = events.len();
        let r = http.post(format!("{base}/v1/events")).bearer_auth(&writer).json(&events).send().await.expect("POST /v1/events");
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.expect("body");
        assert_eq!(body["accepted"].as_array().map(Vec::len), Some(n), "every event accepted: {body}");
    };
    let group = format!("{prefix}lms-progress");
    let lag = async || -> Option<i64> {
        let text = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
        group_lag(&text, &group)
    };

    let course = json!({"specversion": "1.0", "id": "lag-course", "type": "course.published", "source": "t",
        "time": "2026-11-01T00:00:00Z", "data": {"course_id": "c", "title": "C", "version": 1,
        "modules": [{"module_id": "m", "lessons": ["l1"]}]}});
    send(vec![course]).await;
    send(enrollments(0, 10)).await;
    let last = std::sync::Mutex::new(None);
    let caught_up = tests::poll_until(Duration::from_secs(90), || async {
        let l = lag().await;
        *last.lock().expect("lock") = l;
        l.filter(|l| *l == 0)
    })
    .await;
    assert!(caught_up.is_some(), "the progress group caught up (gauge at 0); last {:?}", last.lock().expect("lock"));

    // Every member gone: nothing reports lag any more, the exporter still computes it.
    member.kill().expect("kill and reap the member");
    send(enrollments(10, 25)).await;
    let seen = tests::poll_until(Duration::from_secs(60), || async {
        let l = lag().await;
        *last.lock().expect("lock") = l;
        l.filter(|l| *l > 0)
    })
    .await;
    let text = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    let seen = seen.unwrap_or_else(|| {
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("lms_group")).collect();
        panic!("the gauge did not rise within 60 s (last {:?}): {series:#?}", last.lock().expect("lock"))
    });
    // Not `== 25`: tansu 0.6's log end (ListOffsets) trails the records it acknowledged,
    // so the gauge is only required to rise from zero while no member is alive.
    assert!(seen > 0 && seen <= 25, "the lag rose by at most the records produced: {seen}");
    assert!(
        text.lines().any(|l| l.starts_with("lms_group_lag_refreshed_timestamp_seconds ") && !l.ends_with(" 0")),
        "the refresh time is exported"
    );
}
