//! What `lms demo` prints for a newcomer to copy works exactly as printed: its `export` line
//! and every `curl` command, run by bash as they appear on the terminal, succeed (curl's
//! `--fail-with-body` turns a refused request into a failing exit status), and every URL it
//! prints answers 200. Its terminal carries no service log lines unless asked for them.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tests::{eventually, free_port, unique_prefix};

/// The demo process, killed when the test ends however it ends.
struct Demo {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &std::path::Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Runs `script` with bash, as a newcomer's shell would.
fn bash(script: &str) -> Output {
    Command::new("bash").args(["-c", script]).stdin(Stdio::null()).output().expect("run bash")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_the_demo_prints_works_as_printed() {
    let prefix = unique_prefix("demo-commands");
    let dir = std::env::temp_dir().join(format!("{prefix}data"));
    let out = std::env::temp_dir().join(format!("{prefix}stdout.txt"));
    let err = std::env::temp_dir().join(format!("{prefix}stderr.txt"));
    let port = free_port();
    let bin = std::env::var("LMS_BIN").expect("LMS_BIN: the lms binary (run the tests with `cargo xtask test`)");
    let child = Command::new(bin)
        .args(["demo", "--tenants", "1", "--learners", "100", "--weeks", "4", "--rate", "0"])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        // The defaults a newcomer gets: no log filter of the test's environment.
        .env_remove("RUST_LOG")
        .env_remove("LMS_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start lms demo");
    let demo = Demo { child, out, err };

    let stdout = eventually("the demo has caught up with its backfill", Duration::from_secs(180), || {
        let text = read(&demo.out);
        async move { text.contains("caught up:").then_some(text) }
    })
    .await;

    // The terminal: the plan, the progress and the URLs; no INFO lines of the services.
    let stderr = read(&demo.err);
    assert!(!stderr.contains("INFO"), "the demo logs at info by default:\n{stderr}");
    for expected in ["lms demo:", "dashboard", "processed:", "caught up:"] {
        assert!(stdout.contains(expected), "the demo's output lacks {expected:?}:\n{stdout}");
    }

    // The commands, exactly as printed (after the column label, if any).
    let command = |line: &str, start: &str| line.find(start).map(|at| line[at..].trim_end().to_owned());
    let export = stdout.lines().find_map(|l| command(l, "export TOKEN=")).unwrap_or_else(|| panic!("no export line:\n{stdout}"));
    let curls: Vec<String> = stdout.lines().filter_map(|l| command(l, "curl ")).collect();
    assert!(curls.len() >= 2, "the demo prints curl examples:\n{stdout}");
    for curl in &curls {
        let ran = bash(&format!("set -e\n{export}\n{curl}"));
        let body = String::from_utf8_lossy(&ran.stdout);
        assert!(ran.status.success(), "{curl}\nexited {}: {body}{}", ran.status, String::from_utf8_lossy(&ran.stderr));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{curl}: not JSON ({e}): {body}"));
        assert!(json.get("status").and_then(serde_json::Value::as_u64).is_none_or(|s| s < 400), "{curl}: a problem: {body}");
        let empty = json.as_object().map(serde_json::Map::is_empty).or(json.as_array().map(Vec::is_empty)).unwrap_or(true);
        assert!(!empty, "{curl}: an empty answer: {body}");
        if curl.contains("/v1/analytics/enrollments") {
            let enrolled: u64 = json.as_array().into_iter().flatten().filter_map(|p| p["enrollments"].as_u64()).sum();
            assert!(enrolled > 0, "the printed range holds the backfill's enrollments: {body}");
        }
    }

    // Every URL printed answers 200 (curl sends no fragment: the dashboard's token stays in
    // the browser; the page asks for its hints with it, as below).
    let urls: Vec<String> = stdout
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .filter(|w| !curls.iter().any(|c| c.contains(*w)))
        .map(str::to_owned)
        .collect();
    assert!(urls.iter().any(|u| u.contains("/dashboard#token=")), "{urls:?}");
    for url in &urls {
        let ran = bash(&format!("curl -sS --fail-with-body -o /dev/null '{url}'"));
        assert!(ran.status.success(), "{url}: {}", String::from_utf8_lossy(&ran.stderr));
    }
    let hints = bash(&format!(
        "{export}\ncurl -sS --fail-with-body -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:{port}/dashboard/hints.json"
    ));
    let hints: serde_json::Value = serde_json::from_slice(&hints.stdout).expect("hints JSON");
    let tenants = hints["tenants"].as_object().map(serde_json::Map::len).unwrap_or(0);
    assert_eq!(tenants, 1, "the token's tenant's hints: {hints}");
    let _ = std::fs::remove_dir_all(&dir);
}
