//! `topics plan|apply` against the real broker: the first apply creates every topic of
//! topics.yaml, a second plan finds nothing to do, and raising a partition count in the
//! file is applied.

use std::time::Duration;

use lms_bus::topics::{Action, TopicAdmin};
use lms_bus::{KafkaConfig, TopicsFile};
use tests::{eventually, init_logs, kafka_brokers, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_every_topic_and_a_second_apply_changes_nothing() {
    init_logs();
    let prefix = unique_prefix("topics");
    let kafka = KafkaConfig::new(kafka_brokers());
    let admin = TopicAdmin::new(&kafka).expect("admin");
    let file = TopicsFile::bundled();

    let plan = admin.plan(&file, &prefix, None, false).await.expect("plan");
    assert_eq!(plan.actions.len(), file.topics.len(), "{plan}");
    assert!(plan.actions.iter().all(|a| matches!(a, Action::Create { .. })));
    assert!(admin.apply(&plan).await.expect("apply").is_empty(), "every create is supported");

    let observed = eventually("the created topics to show up in metadata", Duration::from_secs(30), || {
        let admin = &admin;
        let (file, prefix) = (&file, &prefix);
        async move {
            let o = admin.observe().await.ok()?;
            file.topics.iter().all(|t| o.contains_key(&format!("{prefix}{}", t.name))).then_some(o)
        }
    })
    .await;
    for t in &file.topics {
        assert_eq!(observed[&format!("{prefix}{}", t.name)].partitions, t.partitions, "partitions of {}", t.name);
    }

    let again = admin.plan(&file, &prefix, None, false).await.expect("second plan");
    assert!(again.is_noop(), "second plan must be empty:\n{again}");
    assert!(again.drift.is_empty(), "{again}");
    admin.apply(&again).await.expect("second apply is a no-op");

    // Raising partitions in the file is applied by the next apply.
    let mut bigger = file.clone();
    bigger.topics[0].partitions += 2;
    let plan = admin.plan(&bigger, &prefix, None, false).await.expect("plan with more partitions");
    assert_eq!(
        plan.actions,
        vec![Action::AddPartitions {
            topic: format!("{prefix}{}", bigger.topics[0].name),
            from: file.topics[0].partitions,
            to: bigger.topics[0].partitions
        }]
    );
    // tansu 0.6.0 does not implement CreatePartitions: apply must say so and go on,
    // and a broker that does implement it must end up with the new count.
    let unsupported = admin.apply(&plan).await.expect("add partitions");
    let name = format!("{prefix}{}", bigger.topics[0].name);
    if unsupported.is_empty() {
        eventually("the new partitions", Duration::from_secs(30), || {
            let (admin, name) = (&admin, &name);
            let want = bigger.topics[0].partitions;
            async move { (admin.observe().await.ok()?[name].partitions == want).then_some(()) }
        })
        .await;
    } else {
        assert_eq!(unsupported.len(), 1);
        assert!(unsupported[0].contains(&name) && unsupported[0].contains("does not support"), "{unsupported:?}");
    }
}

/// The acceptance as an operator types it: `lms topics plan` (exit status 2: changes
/// pending; `--json`), `lms topics apply`, a plan that finds nothing (0) and a second
/// `lms topics apply` that reports no changes. Then an apply that cannot make a change
/// exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lms_topics_commands_plan_apply_and_apply_again() {
    init_logs();
    let prefix = unique_prefix("topics-cli");
    let file = TopicsFile::bundled();
    let env = [("LMS_KAFKA__BROKERS", kafka_brokers()), ("LMS_KAFKA__TOPIC_PREFIX", prefix.clone())];
    // (exit status, stdout, stderr)
    let lms = |args: &[&str]| {
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new(tests::lms_bin()).args(args).env("RUST_LOG", "warn").envs(env.iter().map(|(k, v)| (k, v))).output()
        })
        .expect("run lms");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, plan, err) = lms(&["topics", "plan"]);
    assert_eq!(code, Some(2), "changes pending: exit status 2\n{plan}{err}");
    for t in &file.topics {
        assert!(plan.contains(&format!("+ create {prefix}{}:", t.name)), "the plan creates {}:\n{plan}", t.name);
    }
    let (code, json, err) = lms(&["topics", "plan", "--json"]);
    assert_eq!(code, Some(2), "{json}{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("plan --json is JSON ({e}): {json}"));
    assert_eq!(json["changes_pending"], true, "{json}");
    let created: Vec<&str> =
        json["actions"].as_array().into_iter().flatten().filter(|a| a["action"] == "create").filter_map(|a| a["topic"].as_str()).collect();
    let wanted: Vec<String> = file.topics.iter().map(|t| format!("{prefix}{}", t.name)).collect();
    assert_eq!(created, wanted, "{json}");

    let (code, applied, err) = lms(&["topics", "apply"]);
    let n = file.topics.len();
    assert_eq!(code, Some(0), "{applied}{err}");
    assert!(applied.contains(&format!("Applied {n} of {n} change(s).")), "{applied}");
    // The broker's metadata may trail the creation for a moment: wait on the read-only plan.
    eventually("the plan to find nothing to do", Duration::from_secs(30), || {
        let out = lms(&["topics", "plan"]);
        async move { (out.0 == Some(0) && out.1.contains("No changes")).then_some(()) }
    })
    .await;
    let (code, json, err) = lms(&["topics", "plan", "--json"]);
    assert_eq!(code, Some(0), "{json}{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("plan --json");
    assert_eq!((&json["changes_pending"], &json["actions"]), (&serde_json::json!(false), &serde_json::json!([])), "{json}");
    let (code, again, err) = lms(&["topics", "apply"]);
    assert_eq!(code, Some(0), "{again}{err}");
    assert!(again.contains("No changes"), "{again}");
    assert!(!again.contains("Applied") && !again.contains("+ create"), "a second apply changes nothing:\n{again}");

    // More partitions for the first topic: tansu 0.6.0 does not implement CreatePartitions,
    // so apply says what it did not apply and exits non-zero; a broker that does applies it.
    let mut bigger = file.clone();
    bigger.topics[0].partitions += 2;
    let path = std::env::temp_dir().join(format!("{prefix}topics.yaml"));
    std::fs::write(&path, serde_yaml::to_string(&bigger).expect("yaml")).expect("write the topics file");
    let path = path.display().to_string();
    let (code, plan, err) = lms(&["topics", "plan", "--topics", &path]);
    assert_eq!(code, Some(2), "{plan}{err}");
    let (code, applied, err) = lms(&["topics", "apply", "--topics", &path]);
    if applied.contains("! not applied:") {
        assert_eq!(code, Some(1), "a partial apply fails:\n{applied}{err}");
        assert!(applied.contains("Applied 0 of 1 change(s)."), "{applied}");
        assert!(err.contains("1 of 1 change(s) not applied"), "the error says what failed: {err}");
    } else {
        assert_eq!(code, Some(0), "{applied}{err}");
    }
    let _ = std::fs::remove_file(&path);
}
