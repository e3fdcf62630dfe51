//! `lms demo` as a newcomer runs it, looked at with a real browser: the demo starts with
//! nothing but its binary, its generator's backfill runs through every processor, and the
//! dashboard page it prints, loaded in headless Chromium, shows data in every chart. Then
//! SIGTERM stops it cleanly. The screenshot is left in the test artifacts.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tests::browser::{Visit, artifacts_dir, attribute_values};
use tests::{eventually, free_port, init_logs, unique_prefix};

struct Demo {
    child: Child,
    out: std::path::PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn output(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.out) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_dashboard_shows_data_in_every_chart() {
    init_logs();
    let prefix = unique_prefix("demo");
    let dir = std::env::temp_dir().join(format!("{prefix}data"));
    let out = std::env::temp_dir().join(format!("{prefix}stdout.txt"));
    let err = std::fs::File::create(std::env::temp_dir().join(format!("{prefix}stderr.txt"))).expect("log");
    let port = free_port();
    let bin = std::env::var("LMS_BIN").expect("LMS_BIN: the lms binary (run the tests with `cargo xtask test`)");
    let child = Command::new(bin)
        .args(["demo", "--tenants", "1", "--learners", "150", "--weeks", "6", "--rate", "20"])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(err)
        .spawn()
        .expect("start lms demo");
    let mut demo = Demo { child, out };

    let url = eventually("the demo has caught up with its backfill", Duration::from_secs(180), || {
        let text = demo.output();
        async move {
            let url = text.lines().find_map(|l| l.trim().strip_prefix("dashboard").map(|u| u.trim().to_owned()))?;
            text.contains("caught up:").then_some(url)
        }
    })
    .await;
    assert!(url.starts_with(&format!("http://127.0.0.1:{port}/dashboard#token=")), "{url}");

    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || Visit::default().dump_dom(&url)
    })
    .await
    .expect("chromium");
    for chart in ["active-learners", "enrollments", "completions", "revenue", "funnel", "scores"] {
        let points = attribute_values(&dom, &format!("id=\"chart-{chart}\""), "data-points");
        let n: u32 = points.first().and_then(|p| p.parse().ok()).unwrap_or(0);
        assert!(
            n > 0,
            "chart {chart} has data points ({points:?}); the page's message: {:?}",
            tests::browser::inner_text(&dom, "id=\"message\"")
        );
    }
    let screenshot = artifacts_dir().join("demo-dashboard.png");
    tokio::task::spawn_blocking({
        let url = url.clone();
        let screenshot = screenshot.clone();
        move || Visit::default().screenshot(&url, &screenshot)
    })
    .await
    .expect("chromium");
    assert!(std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0) > 10_000, "a real screenshot");

    // SIGTERM: the demo drains and exits 0.
    let pid = demo.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = eventually("the demo exits after SIGTERM", Duration::from_secs(60), || {
        let status = demo.child.try_wait().expect("wait");
        async move { status }
    })
    .await;
    assert!(status.success(), "the demo exits cleanly: {status}\n{}", demo.output());
    assert!(demo.output().contains("stopped;"), "{}", demo.output());
    let _ = std::fs::remove_dir_all(&dir);
}
