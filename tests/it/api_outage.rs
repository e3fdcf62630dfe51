//! Backpressure, not loss: the broker stopped mid-test turns writes into 503 with
//! `Retry-After` and `/readyz` unready; when it is back, writes are accepted again, and
//! every event ever acknowledged with a 202 (or listed as accepted in a 503) is on the
//! topic afterwards.

use std::collections::BTreeSet;
use std::time::Duration;

use lms_events::{Domain, EventType, examples};
use serde_json::{Value, json};
use tests::{OwnBroker, eventually};

use crate::api_support::{TestApi, answer, config, read_until, token};

fn batch(round: usize) -> Value {
    json!(
        (0..5)
            .map(|i| {
                let mut e = examples::client_json(EventType::LessonCompleted);
                e["id"] = json!(format!("out-{round:04}-{i}"));
                e["data"]["learner_id"] = json!(format!("learner-{i}"));
                e
            })
            .collect::<Vec<_>>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_broker_outage_is_503_and_unready_then_accepted_again_with_nothing_lost() {
    let mut broker = OwnBroker::start(true).await;
    let cfg =
        api::ApiConfig { delivery_timeout_ms: 3_000, readiness_interval_ms: 200, readiness_timeout_ms: 500, retry_after_s: 1, ..config() };
    let api = TestApi::start("api-outage", &broker.brokers(), cfg).await;
    let write = token("events:write");
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut round = 0;
    let send = |api: &TestApi, round: &mut usize| {
        *round += 1;
        let request = api.post("/v1/events", Some(&write), &batch(*round));
        async move { answer(request.send().await.expect("the API answers")).await }
    };
    let keep = |acknowledged: &mut BTreeSet<String>, (status, _, body): &(u16, String, Value)| {
        if *status == 202 || *status == 503 {
            for id in body["accepted"].as_array().into_iter().flatten() {
                acknowledged.insert(id.as_str().unwrap().to_owned());
            }
        }
    };

    for _ in 0..5 {
        let a = send(&api, &mut round).await;
        assert_eq!(a.0, 202, "{}", a.2);
        keep(&mut acknowledged, &a);
    }

    broker.kill();
    let unavailable = eventually("a 503 while the broker is down", Duration::from_secs(60), || {
        let request = api.post("/v1/events", Some(&write), &batch(1000 + acknowledged.len()));
        async move {
            let r = request.send().await.ok()?;
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_owned());
            let a = answer(r).await;
            (a.0 == 503).then_some((a, retry_after))
        }
    })
    .await;
    let ((_, ct, body), retry_after) = unavailable;
    assert_eq!(ct, "application/problem+json");
    assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
    keep(&mut acknowledged, &(503, ct.clone(), body.clone()));
    eventually("/readyz to turn unready", Duration::from_secs(30), || async {
        let r = api.http.get(format!("{}/readyz", api.url)).send().await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    // Known unreachable: refused at once, nothing half-accepted.
    let a = send(&api, &mut round).await;
    assert_eq!(a.0, 503, "{}", a.2);
    assert_eq!(a.2["accepted"], Value::Null, "nothing of it was enqueued");

    broker.restart().await;
    let a = eventually("writes to be accepted again", Duration::from_secs(90), || {
        let request = api.post("/v1/events", Some(&write), &batch(2000));
        async move {
            let a = answer(request.send().await.ok()?).await;
            (a.0 == 202).then_some(a)
        }
    })
    .await;
    keep(&mut acknowledged, &a);
    api.wait_ready().await;
    for _ in 0..3 {
        let a = send(&api, &mut round).await;
        assert_eq!(a.0, 202, "{}", a.2);
        keep(&mut acknowledged, &a);
    }

    let topic = api.topic(Domain::Learning);
    let on_topic = read_until(&api.brokers, &topic, |rs| {
        let ids: BTreeSet<&str> = rs.iter().map(|r| r.event.id.as_str()).collect();
        acknowledged.iter().all(|id| ids.contains(id.as_str()))
    })
    .await;
    assert!(on_topic.len() >= acknowledged.len());
    assert!(acknowledged.len() >= 45, "{}", acknowledged.len());
}
