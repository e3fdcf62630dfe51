//! `POST /v1/payments/webhook`: signed callbacks become payment events; wrong, old and
//! replayed signatures; redeliveries answered 200 without a second event.

use lms_events::{Domain, EventData};
use serde_json::{Value, json};
use tests::kafka_brokers;

use crate::api_support::{TENANT, TestApi, WEBHOOK_SECRET, answer, config, read_until};

fn body(id: &str, amount: i64) -> Vec<u8> {
    json!({
        "id": id, "type": "payment.succeeded", "created": chrono::Utc::now().timestamp() - 5, "livemode": false,
        "data": {"payment_id": format!("pay-{id}"), "learner_id": "learner-42", "course_id": "course-rust-101", "amount_minor": amount, "currency": "EUR"}
    })
    .to_string()
    .into_bytes()
}

async fn send(api: &TestApi, tenant: &str, signature: &str, body: &[u8]) -> (u16, String, Value) {
    let r = api
        .http
        .post(format!("{}/v1/payments/webhook", api.url))
        .header("content-type", "application/json")
        .header("Lms-Tenant", tenant)
        .header("Lms-Signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    answer(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_webhooks_are_verified_and_redeliveries_change_nothing() {
    let api = TestApi::start("api-webhook", &kafka_brokers(), config()).await;
    let now = chrono::Utc::now().timestamp();
    let first = body("evt_wh_1", 4900);
    let signature = api::webhook::sign(WEBHOOK_SECRET.as_bytes(), now, &first);

    let (status, _, accepted) = send(&api, TENANT, &signature, &first).await;
    assert_eq!(status, 202, "{accepted}");
    let event_id = api::webhook::event_id(TENANT, "evt_wh_1");
    assert_eq!(accepted, json!({"event_id": event_id, "webhook_id": "evt_wh_1", "duplicate": false}));

    // The same signed request replayed, and a redelivery signed anew: 200, nothing produced.
    let (status, _, replay) = send(&api, TENANT, &signature, &first).await;
    assert_eq!((status, replay["duplicate"].as_bool()), (200, Some(true)), "{replay}");
    let resigned = api::webhook::sign(WEBHOOK_SECRET.as_bytes(), now + 1, &first);
    assert_eq!(send(&api, TENANT, &resigned, &first).await.0, 200);

    // Refused: wrong secret, tampered body, old timestamp, unknown tenant, no signature.
    let problem = |(s, ct, body): (u16, String, Value), what: &str| {
        assert_eq!((s, ct.as_str()), (401, "application/problem+json"), "{what}: {body}");
    };
    let other = body("evt_wh_bad", 100);
    problem(send(&api, TENANT, &api::webhook::sign(b"whsec_wrong", now, &other), &other).await, "wrong secret");
    problem(send(&api, TENANT, &api::webhook::sign(WEBHOOK_SECRET.as_bytes(), now, &first), &other).await, "signature of another body");
    problem(send(&api, TENANT, &api::webhook::sign(WEBHOOK_SECRET.as_bytes(), now - 301, &other), &other).await, "older than 300 s");
    problem(send(&api, "globex", &api::webhook::sign(WEBHOOK_SECRET.as_bytes(), now, &other), &other).await, "tenant without secret");
    problem(send(&api, TENANT, "", &other).await, "no signature");

    // A valid signature over invalid data is 422 at the field.
    let invalid = body("evt_wh_invalid", 0);
    let (status, _, problem422) = send(&api, TENANT, &api::webhook::sign(WEBHOOK_SECRET.as_bytes(), now, &invalid), &invalid).await;
    assert_eq!(status, 422, "{problem422}");
    assert_eq!(problem422["errors"][0]["path"], "/data/amount_minor");

    let second = body("evt_wh_2", 1500);
    let (status, _, _) = send(&api, TENANT, &api::webhook::sign(WEBHOOK_SECRET.as_bytes(), now, &second), &second).await;
    assert_eq!(status, 202);
    let last = api::webhook::event_id(TENANT, "evt_wh_2");
    let records = read_until(&api.brokers, &api.topic(Domain::Payment), |rs| rs.iter().any(|r| r.event.id == last)).await;
    let ids: Vec<&str> = records.iter().map(|r| r.event.id.as_str()).collect();
    assert_eq!(ids, [event_id.as_str(), last.as_str()], "one event per webhook id, nothing refused");
    let EventData::PaymentSucceeded(p) = &records[0].event.data else { panic!("a payment.succeeded") };
    assert_eq!((p.amount_minor, records[0].key.as_str()), (4900, "pay-evt_wh_1"));
    assert_eq!(records[0].event.source, "payment-webhook");
    assert_eq!(records[0].event.tenant, TENANT);
}

/// With the state store (as `lms api` runs), a redelivery is recognised by a second API
/// instance and after a restart: 200, `duplicate`, and the topic holds the event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_are_recognised_by_other_instances_and_after_a_restart() {
    let store = processors::open_store(&crate::support::fresh_postgres_db("webhook_ledger").await, 4).await.expect("state store");
    let with_store = |a: api::Api| a.webhook_store(store.clone());
    let first = TestApi::start_with("api-webhook-ledger", &kafka_brokers(), config(), with_store).await;
    let now = chrono::Utc::now().timestamp();
    let delivery = body("evt_wh_durable", 2500);
    let sign = |t: i64, b: &[u8]| api::webhook::sign(WEBHOOK_SECRET.as_bytes(), t, b);
    let (status, _, accepted) = send(&first, TENANT, &sign(now, &delivery), &delivery).await;
    assert_eq!(status, 202, "{accepted}");

    let replica = first.another(config(), with_store).await;
    let (status, _, again) = send(&replica, TENANT, &sign(now + 1, &delivery), &delivery).await;
    assert_eq!((status, again["duplicate"].as_bool()), (200, Some(true)), "a second instance: {again}");

    drop(replica);
    let restarted = first.another(config(), with_store).await;
    drop(first);
    let (status, _, again) = send(&restarted, TENANT, &sign(now + 2, &delivery), &delivery).await;
    assert_eq!((status, again["duplicate"].as_bool()), (200, Some(true)), "after a restart: {again}");

    // A new webhook after them: the topic holds each event once.
    let next = body("evt_wh_durable_2", 900);
    assert_eq!(send(&restarted, TENANT, &sign(now, &next), &next).await.0, 202);
    let (first_id, last) = (api::webhook::event_id(TENANT, "evt_wh_durable"), api::webhook::event_id(TENANT, "evt_wh_durable_2"));
    let records = read_until(&restarted.brokers, &restarted.topic(Domain::Payment), |rs| rs.iter().any(|r| r.event.id == last)).await;
    let ids: Vec<&str> = records.iter().map(|r| r.event.id.as_str()).collect();
    assert_eq!(ids, [first_id.as_str(), last.as_str()], "nothing produced for the redeliveries");
    store.close().await;
}
