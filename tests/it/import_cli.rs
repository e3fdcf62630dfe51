//! `lms import` against the real broker: NDJSON events and a gzip'd Moodle-style xAPI array
//! reach the topics with the API's keys and headers; bad lines land in the report with their
//! file, line and JSON pointers; a second import changes nothing (same ids); an interrupted
//! import resumes after its last acknowledged chunk without sending anything twice.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use lms_bus::admin::Admin;
use lms_bus::admin::rekey::LogRecord;
use lms_bus::{KafkaConfig, TopicsFile};
use lms_events::{Domain, codec};
use serde_json::{Value, json};
use tests::{durable_kafka_brokers, init_logs, run_lms, unique_prefix};

use crate::pipeline_e2e::event;

const TENANT: &str = "acme";
const MOODLE: &str = "https://moodle.example.org";

/// Five NDJSON lines of which three are valid (one without an id), then a blank line, a
/// line that is not JSON and one naming another tenant.
fn events_file(dir: &Path) -> std::path::PathBuf {
    let modules = json!([{"module_id": "m1", "lessons": ["l1", "l2"]}]);
    let mut no_id = event(
        "x",
        "lesson.completed",
        "2024-03-02T10:00:00Z",
        Some("ada"),
        json!({"learner_id": "ada", "course_id": "c1", "lesson_id": "l1"}),
    );
    no_id.as_object_mut().expect("object").remove("id");
    let mut foreign = event(
        "f1",
        "lesson.completed",
        "2024-03-02T11:00:00Z",
        Some("bob"),
        json!({"learner_id": "bob", "course_id": "c1", "lesson_id": "l1"}),
    );
    foreign["tenant"] = json!("globex");
    let lines = [
        event(
            "c1-v1",
            "course.published",
            "2024-03-01T08:00:00Z",
            None,
            json!({"course_id": "c1", "title": "C1", "version": 1, "modules": modules}),
        )
        .to_string(),
        event(
            "e1",
            "enrollment.created",
            "2024-03-01T09:00:00Z",
            Some("ada"),
            json!({"learner_id": "ada", "course_id": "c1", "source": "admin"}),
        )
        .to_string(),
        event("bad-1", "lesson.completed", "2024-03-02T09:00:00Z", Some("ada"), json!({"learner_id": "ada"})).to_string(),
        no_id.to_string(),
        String::new(),
        "{not json".to_owned(),
        foreign.to_string(),
    ];
    let path = dir.join("events.ndjson");
    std::fs::write(&path, lines.join("\n") + "\n").expect("events file");
    path
}

/// Two Moodle statements without ids (a module completion and an unsupported verb), as a
/// gzip'd JSON array.
fn xapi_file(dir: &Path) -> std::path::PathBuf {
    let actor = json!({"name": "Ada", "account": {"homePage": MOODLE, "name": "7"}});
    let context = json!({"contextActivities": {"grouping": [
        {"id": format!("{MOODLE}/course/view.php?id=12"), "definition": {"type": "http://id.tincanapi.com/activitytype/lms/course"}}
    ]}});
    let statements = json!([
        {"actor": actor, "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
         "object": {"id": format!("{MOODLE}/mod/book/view.php?id=34"), "definition": {"type": "http://id.tincanapi.com/activitytype/lms/module"}},
         "timestamp": "2024-03-03T11:15:00+01:00", "context": context},
        {"actor": actor, "verb": {"id": "http://example.org/verbs/danced"},
         "object": {"id": format!("{MOODLE}/mod/book/view.php?id=35")}, "timestamp": "2024-03-03T11:20:00+01:00", "context": context},
    ]);
    let path = dir.join("moodle.json.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).expect("xapi file"), flate2::Compression::default());
    gz.write_all(statements.to_string().as_bytes()).expect("gzip");
    gz.finish().expect("gzip");
    path
}

/// Every record of the learning, enrollment and catalog topics.
fn records(brokers: &str, prefix: &str) -> Vec<(String, LogRecord)> {
    let admin = Admin::new(&KafkaConfig::new(brokers)).expect("admin");
    let topics = TopicsFile::bundled().topic_map(prefix);
    let mut out = Vec::new();
    for d in [Domain::Learning, Domain::Enrollment, Domain::Catalog] {
        let topic = topics.topic(d).to_owned();
        let read = tokio::task::block_in_place(|| admin.read_log(&topic, &mut |_| {})).expect("read the topic");
        out.extend(read.into_iter().map(|r| (topic.clone(), r)));
    }
    out
}

fn ids(records: &[(String, LogRecord)]) -> Vec<String> {
    let mut ids: Vec<String> =
        records.iter().map(|(_, r)| codec::decode(r.value.as_deref().unwrap_or_default()).expect("an event").id).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_validates_reports_is_idempotent_and_resumes() {
    init_logs();
    let brokers = durable_kafka_brokers();
    let prefix = unique_prefix("import");
    let work = std::env::temp_dir().join(format!("{prefix}import"));
    let dir = work.join("export");
    std::fs::create_dir_all(&dir).expect("dir");
    events_file(&dir);
    xapi_file(&dir);
    let env = vec![("LMS_KAFKA__BROKERS", brokers.clone()), ("LMS_KAFKA__TOPIC_PREFIX", prefix.clone())];
    let applied = run_lms(&["topics", "apply"], &env);
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    let report = work.join("rejected.ndjson");
    let checkpoints = work.join("checkpoints");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["import", "--tenant", TENANT, "--report"].iter().map(ToString::to_string).collect();
        a.push(report.display().to_string());
        a.extend(["--checkpoint-dir".to_owned(), checkpoints.display().to_string()]);
        a.extend(extra.iter().map(ToString::to_string));
        a.push(dir.display().to_string());
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = run_lms(&refs, &env);
        assert!(out.ok, "lms {a:?}: {}{}", out.stdout, out.stderr);
        out.stdout + &out.stderr
    };

    // A dry run validates only.
    let dry = run(&["--dry-run"]);
    assert!(dry.contains("validated 8 lines: 4 events valid, 4 rejected"), "{dry}");
    std::fs::remove_file(&report).expect("the dry run wrote the report");

    // Interrupted after three lines (chunks of two), then resumed: every valid event once.
    let first = run(&["--chunk", "2", "--stop-after-lines", "3"]);
    assert!(first.contains("imported 3 lines: 2 events sent, 1 rejected"), "{first}");
    let resumed = run(&["--chunk", "2"]);
    assert!(resumed.contains("imported 5 lines: 2 events sent, 3 rejected"), "{resumed}");
    let once = records(&brokers, &prefix);
    assert_eq!(once.len(), 4, "each valid event exactly once: {:?}", ids(&once));
    assert_eq!(ids(&once).iter().collect::<BTreeSet<_>>().len(), 4);

    // The API's keys and headers: each event's partition key, its content type.
    for (topic, r) in &once {
        let event = codec::decode(r.value.as_deref().unwrap_or_default()).expect("an event");
        assert_eq!(r.key.as_deref(), Some(event.partition_key().as_bytes()), "{topic}: {}", event.id);
        assert!(r.headers.iter().any(|(k, _)| k == codec::headers::CONTENT_TYPE), "{topic}: {:?}", r.headers);
    }
    assert!(ids(&once).iter().any(|id| id.len() == 36), "the Moodle statement's derived UUID: {:?}", ids(&once));

    // The report: file, line, pointers.
    let rejected: Vec<Value> =
        std::fs::read_to_string(&report).expect("report").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let at = |file: &str, line: u64| rejected.iter().find(|r| r["file"].as_str().is_some_and(|f| f.ends_with(file)) && r["line"] == line);
    assert!(
        at("events.ndjson", 3).is_some_and(|r| r["errors"].as_array().is_some_and(|e| e.iter().any(|e| e["path"] == "/data/course_id"))),
        "{rejected:#?}"
    );
    assert!(
        at("events.ndjson", 6).is_some_and(|r| r["errors"][0]["message"].as_str().is_some_and(|m| m.contains("not JSON"))),
        "{rejected:#?}"
    );
    assert!(at("events.ndjson", 7).is_some_and(|r| r["errors"][0]["path"] == "/tenant"), "{rejected:#?}");
    assert!(at("moodle.json.gz", 2).is_some(), "the unsupported verb: {rejected:#?}");
    assert_eq!(rejected.len(), 4, "{rejected:#?}");

    // Run again: every file is already imported.
    let again = run(&[]);
    assert!(again.contains("already imported") && again.contains("0 events sent"), "{again}");
    // Forced again from the start: the same ids, so no result changes.
    let restarted = run(&["--restart"]);
    assert!(restarted.contains("4 events sent"), "{restarted}");
    let twice = records(&brokers, &prefix);
    assert_eq!(twice.len(), 8);
    let mut expected = ids(&once);
    expected.extend(ids(&once));
    expected.sort();
    assert_eq!(ids(&twice), expected, "the second import sent the same ids");
    std::fs::remove_dir_all(&work).ok();
}
