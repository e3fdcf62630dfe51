//! The broker killed with SIGKILL and restarted mid-run (tansu on its durable SQLite
//! engine): every event the API acknowledged is processed, none twice. Clients retry what
//! was not acknowledged with the same ids, as the contract tells them to.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use tests::{BusFixture, OwnBroker, eventually, free_port, init_logs, lms_env, spawn_lms};

use crate::api_support::{SECRET, token};
use crate::support::fresh_postgres_db;

const LEARNERS: usize = 60;
const LESSONS: usize = 30;

fn batches() -> Vec<Vec<Value>> {
    let lessons: Vec<String> = (0..LESSONS).map(|i| format!("l{i:02}")).collect();
    let mut events = vec![json!({"specversion": "1.0", "id": "course-v1", "type": "course.published", "source": "t",
        "time": "2026-11-01T00:00:00Z", "data": {"course_id": "c", "title": "C", "version": 1,
        "modules": [{"module_id": "m", "lessons": lessons}]}})];
    for l in 0..LEARNERS {
        let learner = format!("learner-{l:03}");
        events.push(json!({"specversion": "1.0", "id": format!("enr-{l}"), "type": "enrollment.created", "source": "t",
            "time": "2026-11-02T00:00:00Z", "subject": learner, "data": {"learner_id": learner, "course_id": "c", "source": "self"}}));
    }
    for i in 0..LESSONS {
        for l in 0..LEARNERS {
            let learner = format!("learner-{l:03}");
            events.push(json!({"specversion": "1.0", "id": format!("done-{l}-{i}"), "type": "lesson.completed", "source": "t",
                "time": format!("2026-11-03T{:02}:{:02}:00Z", i / 60, i % 60), "subject": learner,
                "data": {"learner_id": learner, "course_id": "c", "lesson_id": format!("l{i:02}")}}));
        }
    }
    events.chunks(60).map(<[Value]>::to_vec).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_acknowledged_across_a_broker_kill_are_all_processed() {
    init_logs();
    let mut broker = OwnBroker::start(true).await;
    let brokers = broker.brokers();
    let BusFixture { prefix, .. } = BusFixture::fresh(&brokers, "broker-restart", 2).await;
    let url = fresh_postgres_db("broker_restart").await;
    let store = processors::open_store(&url, 2).await.expect("store");
    let port = free_port();
    let mut env = lms_env(&brokers, &prefix, &url, port, SECRET);
    env.push(("LMS_CONSUMER__SESSION_TIMEOUT_MS", "6000".to_owned()));
    env.push(("LMS_API__READINESS_INTERVAL_MS", "200".to_owned()));
    env.push(("LMS_API__DELIVERY_TIMEOUT_MS", "3000".to_owned()));
    let _processors = spawn_lms(&["processor", "run", "catalog", "progress"], &env, &format!("{prefix}processors.log"));
    let _api = spawn_lms(&["api"], &env, &format!("{prefix}api.log"));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
    eventually("the API is ready", Duration::from_secs(60), || async {
        (http.get(format!("{base}/readyz")).send().await.ok()?.status() == 200).then_some(())
    })
    .await;

    // Send every batch until acknowledged; kill the broker once a third is through and
    // restart it when the API has noticed.
    let writer = token("events:write");
    let all = batches();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let (mut killed, mut restarted, mut refused) = (false, false, 0);
    let mut pending: std::collections::VecDeque<Vec<Value>> = all.iter().cloned().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while let Some(batch) = pending.pop_front() {
        assert!(std::time::Instant::now() < deadline, "every batch is acknowledged within 4 minutes ({} left)", pending.len() + 1);
        if !killed && acknowledged.len() > all.len() * 60 / 3 {
            broker.kill();
            killed = true;
        }
        let answer = http.post(format!("{base}/v1/events")).bearer_auth(&writer).json(&batch).send().await;
        let status = answer.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        let body: Value = match answer {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        for id in body["accepted"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            acknowledged.insert(id.to_owned());
        }
        if status == 202 {
            continue;
        }
        assert!(status == 503 || status == 0, "while the broker is down the API answers 503, not {status}: {body}");
        refused += 1;
        if killed && !restarted {
            broker.restart().await;
            restarted = true;
        }
        pending.push_front(batch);
        // Honour Retry-After loosely: poll readiness until the API takes writes again.
        tests::poll_until(Duration::from_secs(30), || async {
            (http.get(format!("{base}/readyz")).send().await.ok()?.status() == 200).then_some(())
        })
        .await;
    }
    assert!(killed && restarted && refused > 0, "the broker was killed mid-run and writes were refused meanwhile");
    let total: usize = all.iter().map(Vec::len).sum();
    assert_eq!(acknowledged.len(), total, "every event is acknowledged in the end");

    // Every acknowledged lesson is in the learners' progress, each counted once.
    eventually("every learner completed the course", Duration::from_secs(180), || async {
        for l in 0..LEARNERS {
            let p = processors::progress::read(&store, "acme", &format!("learner-{l:03}")).await.ok()?;
            if p.len() != 1 || p[0].lessons_completed != LESSONS as u32 || p[0].lessons_total != LESSONS as u32 {
                return None;
            }
        }
        Some(())
    })
    .await;
}
