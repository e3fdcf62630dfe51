//! `lms api`, `lms processor run`, `lms migrate`, `lms groups` and `lms replay` refuse to
//! start without an explicitly configured state store (and analytics store, where they use
//! one), naming the key to set, before they open or create anything.
//! (`lms demo` keeps its embedded stores: `demo_commands.rs`, `demo_browser.rs`.)

use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{eventually, unique_prefix};

/// Runs `lms <args>` in an empty directory with only `env` of the configuration, waits for it
/// to exit and returns (success, stderr, whether it created anything in the directory).
async fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, bool) {
    let bin = std::env::var("LMS_BIN").expect("LMS_BIN: the lms binary (run the tests with `cargo xtask test`)");
    let dir = std::env::temp_dir().join(unique_prefix("fail-fast"));
    std::fs::create_dir_all(&dir).expect("dir");
    let err = dir.with_extension("stderr");
    let mut cmd = Command::new(bin);
    for (name, _) in std::env::vars() {
        if name.starts_with("LMS_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        // Nothing answers here: a process that got past the check would not exit at once.
        .env("LMS_KAFKA__BROKERS", "127.0.0.1:9")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start lms");
    let status = eventually(&format!("`lms {}` to exit", args.join(" ")), Duration::from_secs(30), || {
        let status = child.try_wait().expect("wait");
        async move { status }
    })
    .await;
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let created = std::fs::read_dir(&dir).map(|d| d.count() > 0).unwrap_or(true);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&err);
    (status.success(), stderr, created)
}

#[tokio::test]
async fn server_commands_name_the_store_they_miss() {
    let state = ["`store.url`", "LMS_STORE__URL"];
    let analytics = ["`analytics.store`", "LMS_ANALYTICS__STORE"];
    let sqlite = ("LMS_STORE__URL", "sqlite://state.db");
    // (command, environment, the two names the error must mention)
    type Case<'a> = (&'a [&'a str], Vec<(&'a str, &'a str)>, [&'a str; 2]);
    let cases: [Case<'_>; 9] = [
        (&["api"], vec![("LMS_JWT_SECRET", "s")], state),
        (&["api"], vec![("LMS_JWT_SECRET", "s"), sqlite], analytics),
        (&["processor", "run", "progress"], vec![], state),
        (&["processor", "run", "progress", "analytics"], vec![sqlite], analytics),
        (&["processor", "run", "all"], vec![("LMS_STORE__URL", "")], state),
        // The operator tools that read or change a deployment's state.
        (&["migrate"], vec![], state),
        (&["migrate"], vec![sqlite], analytics),
        (&["groups"], vec![], state),
        (&["replay", "--group", "progress", "--to-earliest", "--yes"], vec![], state),
    ];
    for (args, env, keys) in cases {
        let (ok, stderr, created) = run(args, &env).await;
        let what = format!("`lms {}` with {env:?}", args.join(" "));
        assert!(!ok, "{what} started");
        for key in keys {
            assert!(stderr.contains(key), "{what}: the message does not name {key}: {stderr}");
        }
        assert!(stderr.contains("lms demo"), "{what}: the message points to the demo: {stderr}");
        assert!(!created, "{what} created files before refusing");
    }
}
