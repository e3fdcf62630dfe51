//! `POST /v1/enrollments` and `DELETE /v1/enrollments/{learner_id}/{course_id}`.

use lms_events::{Domain, EnrollmentSource, EventData};
use serde_json::json;
use tests::kafka_brokers;

use crate::api_support::{TestApi, answer, config, read_until, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_enrollments_become_enrollment_events() {
    let api = TestApi::start("api-enrollments", &kafka_brokers(), config()).await;
    let write = token("events:write");
    let body = json!({"learner_id": "learner-42", "course_id": "course-rust-101", "source": "purchase", "id": "enr-1"});
    let (status, _, answer1) = answer(api.post("/v1/enrollments", Some(&write), &body).send().await.unwrap()).await;
    assert_eq!((status, answer1), (202, json!({"accepted": ["enr-1"], "rejected": []})));
    let no_id = json!({"learner_id": "learner-43", "course_id": "course-rust-101", "source": "self", "time": "2026-11-20T10:00:00Z"});
    let (status, _, assigned) = answer(api.post("/v1/enrollments", Some(&write), &no_id).send().await.unwrap()).await;
    assert_eq!(status, 202, "{assigned}");

    let (status, _, p) =
        answer(api.post("/v1/enrollments", Some(&write), &json!({"learner_id": "l", "course_id": "c", "extra": 1})).send().await.unwrap())
            .await;
    assert_eq!((status, p["errors"][0]["path"].as_str()), (422, Some("/extra")), "{p}");
    let (status, _, p) =
        answer(api.post("/v1/enrollments", Some(&write), &json!({"learner_id": "l", "course_id": "c"})).send().await.unwrap()).await;
    assert_eq!((status, p["errors"][0]["path"].as_str()), (422, Some("/source")), "{p}");
    let r = api.post("/v1/enrollments", Some(&token("learner:read")), &body).send().await.unwrap();
    assert_eq!(r.status(), 403);

    let drop = || {
        api.http
            .delete(format!("{}/v1/enrollments/learner-42/course-rust-101", api.url))
            .bearer_auth(&write)
            .header("Idempotency-Key", "drop-1")
    };
    let (status, _, dropped) = answer(drop().send().await.unwrap()).await;
    assert_eq!((status, dropped["accepted"].clone()), (202, json!(["drop-1"])));
    let (_, _, again) = answer(drop().send().await.unwrap()).await;
    assert_eq!(again["accepted"], json!(["drop-1"]), "a retry keeps the id");
    let r = api.http.delete(format!("{}/v1/enrollments/learner-42/course-rust-101", api.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let records = read_until(&api.brokers, &api.topic(Domain::Enrollment), |rs| rs.len() >= 4).await;
    let EventData::EnrollmentCreated(e) = &records[0].event.data else { panic!("enrollment.created") };
    assert_eq!((e.learner_id.as_str(), e.course_id.as_str(), e.source), ("learner-42", "course-rust-101", EnrollmentSource::Purchase));
    assert_eq!((records[0].key.as_str(), records[0].event.id.as_str()), ("learner-42", "enr-1"));
    assert_eq!(records[1].event.id, assigned["accepted"][0].as_str().unwrap());
    assert_eq!(records[1].event.time.to_rfc3339(), "2026-11-20T10:00:00+00:00");
    assert!(matches!(&records[2].event.data, EventData::EnrollmentDropped(d) if d.course_id == "course-rust-101"));
    assert_eq!((records[2].event.id.as_str(), records[3].event.id.as_str()), ("drop-1", "drop-1"));
}
