//! `POST /v1/xapi/statements` with statements shaped as Moodle's logstore_xapi and Open
//! edX's event-routing-backends emit them: mapped onto events, ids back like an LRS,
//! unsupported verbs rejected per statement with the supported ones.

use lms_events::{Domain, EventData};
use serde_json::{Value, json};
use tests::kafka_brokers;

use crate::api_support::{TestApi, answer, config, read_until, token};

const MOODLE: &str = "https://moodle.example.org";
const EDX: &str = "https://lms.example.org";

fn moodle_context(extra_grouping: &[Value]) -> Value {
    let mut grouping = vec![
        json!({"id": MOODLE, "definition": {"type": "http://id.tincanapi.com/activitytype/lms", "name": {"en": "Example Moodle"}}}),
        json!({"id": format!("{MOODLE}/course/view.php?id=12"), "definition": {"type": "http://id.tincanapi.com/activitytype/lms/course", "name": {"en": "Rust 101"}}}),
    ];
    grouping.extend_from_slice(extra_grouping);
    json!({
        "platform": "Moodle", "language": "en",
        "extensions": {"http://lrs.learninglocker.net/define/extensions/info": {"http://moodle.org": "4.3.0", "event_name": "\\core\\event\\course_module_completion_updated"}},
        "contextActivities": {
            "grouping": grouping,
            "category": [{"id": "http://moodle.org", "definition": {"type": "http://id.tincanapi.com/activitytype/source", "name": {"en": "Moodle"}}}]
        }
    })
}

fn moodle_actor() -> Value {
    json!({"name": "Ada Lovelace", "account": {"homePage": MOODLE, "name": "7"}})
}

/// Module completion, quiz attempt submitted (the attempt and one answered question),
/// and an enrolment, as logstore_xapi sends them: no statement ids.
fn moodle_batch() -> Value {
    json!([
        {
            "actor": moodle_actor(),
            "verb": {"id": "http://adlnet.gov/expapi/verbs/completed", "display": {"en": "completed"}},
            "object": {"id": format!("{MOODLE}/mod/book/view.php?id=34"), "definition": {"type": "http://id.tincanapi.com/activitytype/lms/module", "name": {"en": "Ownership"}}},
            "timestamp": "2026-11-20T11:15:00+01:00",
            "context": moodle_context(&[])
        },
        {
            "actor": moodle_actor(),
            "verb": {"id": "http://adlnet.gov/expapi/verbs/completed", "display": {"en": "completed"}},
            "object": {"id": format!("{MOODLE}/mod/quiz/view.php?id=35"), "definition": {"type": "http://adlnet.gov/expapi/activities/assessment", "name": {"en": "Borrowing quiz"}}},
            "timestamp": "2026-11-20T11:40:00+01:00",
            "result": {"score": {"raw": 50, "min": 0, "max": 100, "scaled": 0.5}, "completion": true, "success": true, "duration": "PT12M"},
            "context": moodle_context(&[json!({"id": format!("{MOODLE}/mod/quiz/attempt.php?attempt=3&cmid=35"), "definition": {"type": "http://adlnet.gov/expapi/activities/attempt", "name": {"en": "Attempt"}}})])
        },
        {
            "actor": moodle_actor(),
            "verb": {"id": "http://adlnet.gov/expapi/verbs/answered", "display": {"en": "answered"}},
            "object": {"id": format!("{MOODLE}/question/question.php?cmid=35&id=9"), "definition": {"type": "http://adlnet.gov/expapi/activities/cmi.interaction", "interactionType": "true-false", "name": {"en": "Is a &mut aliasable?"}}},
            "timestamp": "2026-11-20T11:40:00+01:00",
            "result": {"response": "false", "completion": true, "success": true},
            "context": moodle_context(&[])
        },
        {
            "actor": moodle_actor(),
            "verb": {"id": "http://adlnet.gov/expapi/verbs/registered", "display": {"en": "enrolled to"}},
            "object": {"id": format!("{MOODLE}/course/view.php?id=12"), "definition": {"type": "http://id.tincanapi.com/activitytype/lms/course", "name": {"en": "Rust 101"}}},
            "timestamp": "2026-11-20T09:00:00+01:00",
            "context": moodle_context(&[])
        }
    ])
}

fn edx_actor() -> Value {
    json!({"objectType": "Agent", "account": {"homePage": EDX, "name": "32e08e30-f8ae-4ce2-94a8-c2bfe38a70cb"}})
}

fn edx_parent() -> Value {
    json!({"parent": [{"id": format!("{EDX}/course/course-v1:edX+DemoX+Demo_Course"), "objectType": "Activity",
                        "definition": {"name": {"en-US": "Demonstration Course"}, "type": "http://adlnet.gov/expapi/activities/course"}}]})
}

fn edx_video(id: &str, verb: &str, result_ext: Value, ts: &str) -> Value {
    json!({
        "id": id,
        "actor": edx_actor(),
        "verb": {"id": verb, "display": {"en": verb.rsplit('/').next().unwrap()}},
        "object": {"id": format!("{EDX}/xblock/block-v1:edX+DemoX+Demo_Course+type@video+block@0b9e39477cf34507a7a48f74be381fdd"),
                   "objectType": "Activity", "definition": {"type": "https://w3id.org/xapi/video/activity-type/video"}},
        "result": {"extensions": result_ext},
        "context": {"contextActivities": edx_parent(),
                    "extensions": {"https://w3id.org/xapi/video/extensions/length": 195.0,
                                   "https://w3id.org/xapi/openedx/extension/transformer-version": "event-routing-backends@9.0.0"}},
        "timestamp": ts,
        "version": "1.0.3"
    })
}

/// Enrollment, video pause (with played segments) and seek, video completion, a graded
/// problem, and unenrollment, as event-routing-backends emits them (with ids).
fn edx_batch() -> Value {
    let course = json!({"id": format!("{EDX}/courses/course-v1:edX+DemoX+Demo_Course/"), "objectType": "Activity",
                        "definition": {"name": {"en": "Demonstration Course"}, "type": "http://adlnet.gov/expapi/activities/course"}});
    json!([
        {"id": "6d1f033b-3f70-458c-b53a-e6bb63cbae01", "actor": edx_actor(),
         "verb": {"id": "http://adlnet.gov/expapi/verbs/registered", "display": {"en": "registered"}},
         "object": course, "context": {"registration": "32e08e30-f8ae-4ce2-94a8-c2bfe38a70cb"},
         "timestamp": "2026-11-20T06:36:01.917775+00:00", "version": "1.0.3"},
        edx_video("6d1f033b-3f70-458c-b53a-e6bb63cbae02", "https://w3id.org/xapi/video/verbs/paused",
                  json!({"https://w3id.org/xapi/video/extensions/time": 194.407,
                         "https://w3id.org/xapi/video/extensions/played-segments": "0[.]12.5[,]150[.]194.407"}),
                  "2026-11-20T06:56:09.649080+00:00"),
        edx_video("6d1f033b-3f70-458c-b53a-e6bb63cbae03", "https://w3id.org/xapi/video/verbs/seeked",
                  json!({"https://w3id.org/xapi/video/extensions/time-from": 194.381, "https://w3id.org/xapi/video/extensions/time-to": 10.0}),
                  "2026-11-20T06:58:28.027485+00:00"),
        edx_video("6d1f033b-3f70-458c-b53a-e6bb63cbae04", "http://adlnet.gov/expapi/verbs/completed",
                  json!({"https://w3id.org/xapi/video/extensions/time": 195.0}), "2026-11-20T07:02:41.543562+00:00"),
        {"id": "6d1f033b-3f70-458c-b53a-e6bb63cbae05", "actor": edx_actor(),
         "verb": {"id": "http://adlnet.gov/expapi/verbs/scored", "display": {"en": "scored"}},
         "object": {"id": format!("{EDX}/xblock/block-v1:edX+DemoX+Demo_Course+type@problem+block@3fc5461f86764ad7bdbdf6cbdde61e66"),
                    "objectType": "Activity",
                    "definition": {"type": "http://adlnet.gov/expapi/activities/question", "extensions": {"http://id.tincanapi.com/extension/attempt-id": 2}}},
         "result": {"score": {"max": 3, "min": 0, "raw": 2, "scaled": 0.6667}, "success": false},
         "context": {"contextActivities": edx_parent()},
         "timestamp": "2026-11-20T07:10:29.700909+00:00", "version": "1.0.3"},
        {"id": "6d1f033b-3f70-458c-b53a-e6bb63cbae06", "actor": edx_actor(),
         "verb": {"id": "http://id.tincanapi.com/verb/unregistered", "display": {"en": "unregistered"}},
         "object": course, "timestamp": "2026-11-21T06:39:23.898755+00:00", "version": "1.0.3"}
    ])
}

fn post(api: &TestApi, body: &Value) -> reqwest::RequestBuilder {
    api.post("/v1/xapi/statements", Some(&token("events:write")), body).header("X-Experience-API-Version", "1.0.3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_xapi_moodle_and_open_edx_statements_become_events() {
    let api = TestApi::start("api-xapi", &kafka_brokers(), config()).await;

    // Moodle (Basic credentials, the token as password): three statements map, the
    // answered question is rejected on its own.
    let basic = api
        .http
        .post(format!("{}/v1/xapi/statements", api.url))
        .basic_auth("moodle", Some(token("events:write")))
        .header("content-type", "application/json")
        .header("X-Experience-API-Version", "1.0.3");
    let r = basic.body(moodle_batch().to_string()).send().await.unwrap();
    assert_eq!(r.headers()["x-experience-api-version"], "1.0.3");
    assert_eq!(r.headers()["lms-rejected-count"], "1");
    assert_eq!(r.headers()["lms-rejected-indexes"], "2");
    let (status, _, moodle_ids) = answer(r).await;
    assert_eq!(status, 200, "{moodle_ids}");
    let moodle_ids: Vec<String> = serde_json::from_value(moodle_ids).unwrap();
    assert_eq!(moodle_ids.len(), 3);
    // Resending the same statements (Moodle sends no ids) gives the same ids.
    let (_, _, again) = answer(post(&api, &moodle_batch()).send().await.unwrap()).await;
    assert_eq!(again, json!(moodle_ids));

    // Open edX: every statement maps; the ids are the statements' ids.
    let (status, _, edx_ids) = answer(post(&api, &edx_batch()).send().await.unwrap()).await;
    assert_eq!(status, 200, "{edx_ids}");
    let edx_ids: Vec<String> = serde_json::from_value(edx_ids).unwrap();
    assert_eq!(edx_ids, (1..=6).map(|i| format!("6d1f033b-3f70-458c-b53a-e6bb63cbae0{i}")).collect::<Vec<_>>());

    let learning = read_until(&api.brokers, &api.topic(Domain::Learning), |rs| rs.len() >= 8).await;
    let by_id = |id: &str| learning.iter().find(|r| r.event.id == id).unwrap_or_else(|| panic!("{id} on the learning topic")).event.clone();
    let moodle_course = format!("{MOODLE}/course/view.php?id=12");
    let EventData::LessonCompleted(l) = by_id(&moodle_ids[0]).data else { panic!("module completion is lesson.completed") };
    assert_eq!(
        (l.learner_id.as_str(), l.course_id.as_str(), l.lesson_id.as_str()),
        ("7", moodle_course.as_str(), &*format!("{MOODLE}/mod/book/view.php?id=34"))
    );
    let graded = by_id(&moodle_ids[1]);
    assert_eq!(graded.time.to_rfc3339(), "2026-11-20T10:40:00+00:00");
    let EventData::AssessmentGraded(g) = graded.data else { panic!("quiz completion with a score is assessment.graded") };
    assert_eq!((g.score, g.max_score, g.attempt, g.course_id.as_str()), (50.0, 100.0, 1, moodle_course.as_str()));

    let edx_course = "course-v1:edX+DemoX+Demo_Course";
    let video_block = "block-v1:edX+DemoX+Demo_Course+type@video+block@0b9e39477cf34507a7a48f74be381fdd";
    let EventData::VideoProgressed(v) = by_id(&edx_ids[1]).data else { panic!("paused is video.progressed") };
    assert_eq!((v.course_id.as_str(), v.lesson_id.as_str(), v.position_s, v.duration_s), (edx_course, video_block, 194.407, 195.0));
    assert!((v.watched_s - 44.407).abs() < 1e-9, "the segment the pause closes: {}", v.watched_s);
    let EventData::VideoProgressed(v) = by_id(&edx_ids[2]).data else { panic!("seeked is video.progressed") };
    assert_eq!((v.position_s, v.watched_s), (10.0, 0.0));
    assert!(matches!(by_id(&edx_ids[3]).data, EventData::VideoProgressed(ref v) if v.position_s == 195.0));
    let EventData::AssessmentGraded(g) = by_id(&edx_ids[4]).data else { panic!("scored is assessment.graded") };
    assert_eq!((g.score, g.max_score, g.attempt), (2.0, 3.0, 2));
    assert_eq!(by_id(&edx_ids[4]).subject.as_deref(), Some("32e08e30-f8ae-4ce2-94a8-c2bfe38a70cb"));

    let enrollment = read_until(&api.brokers, &api.topic(Domain::Enrollment), |rs| rs.len() >= 4).await;
    let types: Vec<(&str, &str)> = enrollment.iter().map(|r| (r.event.event_type().as_str(), r.event.course_id().unwrap_or(""))).collect();
    assert_eq!(
        types,
        [
            ("enrollment.created", moodle_course.as_str()),
            ("enrollment.created", moodle_course.as_str()),
            ("enrollment.created", edx_course),
            ("enrollment.dropped", edx_course)
        ]
    );
    assert_eq!(enrollment[0].key, "7", "keyed by learner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_xapi_refuses_what_an_lrs_refuses_and_lists_the_supported_verbs() {
    let api = TestApi::start("api-xapi-errors", &kafka_brokers(), config()).await;
    let batch = moodle_batch();
    let viewed = {
        let mut s = batch[0].clone();
        s["verb"] = json!({"id": "http://id.tincanapi.com/verb/viewed", "display": {"en": "viewed"}});
        s
    };
    let r = api.post("/v1/xapi/statements", Some(&token("events:write")), &viewed).send().await.unwrap();
    assert_eq!(r.headers()["x-experience-api-version"], "1.0.3");
    let (status, ct, body) = answer(r).await;
    assert_eq!((status, ct.as_str()), (400, "application/problem+json"), "no version header: {body}");

    let (status, _, body) = answer(post(&api, &viewed).send().await.unwrap()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["path"], "/verb/id");
    let message = body["errors"][0]["message"].as_str().unwrap();
    for verb in [
        "http://adlnet.gov/expapi/verbs/registered",
        "http://id.tincanapi.com/verb/unregistered",
        "https://w3id.org/xapi/video/verbs/paused",
    ] {
        assert!(message.contains(verb), "the supported verbs are listed: {message}");
    }
    let mut mbox = batch[0].clone();
    mbox["actor"] = json!({"mbox": "mailto:ada@example.org"});
    let mut no_score = batch[1].clone();
    no_score["verb"]["id"] = json!("http://adlnet.gov/expapi/verbs/passed");
    no_score.as_object_mut().unwrap().remove("result");
    let (status, _, body) = answer(post(&api, &json!([viewed, mbox, no_score])).send().await.unwrap()).await;
    assert_eq!(status, 422, "nothing valid: {body}");
    let paths: Vec<&str> = body["rejected"].as_array().unwrap().iter().map(|r| r["errors"][0]["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/verb/id", "/actor/account/name", "/result/score"]);
    let r = api
        .post("/v1/xapi/statements", Some(&token("events:write")), &batch[0])
        .header("X-Experience-API-Version", "2.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "only 1.0.x");
}
