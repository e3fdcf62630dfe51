//! Headless Chromium for page tests: load a URL, let its scripts run for a budget of
//! virtual time, and return the DOM as it then is (and a screenshot).
//!
//! Chromium is `/usr/bin/chromium` (Debian's package) unless `LMS_CHROMIUM_BIN` names
//! another. Every run gets a fresh profile directory, no background networking, no
//! component updates and no sync, so a page can reach nothing but what its URL serves.
//! Virtual time (`--virtual-time-budget`) fast-forwards timers: a page refreshing every few
//! seconds refreshes several times within the budget, while network requests complete in
//! real time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How long one Chromium run may take in real time before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// The Chromium binary: `LMS_CHROMIUM_BIN`, else `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("LMS_CHROMIUM_BIN").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Where tests leave files for people to look at (`LMS_TEST_ARTIFACTS_DIR`, set by
/// `cargo xtask test`; a temporary directory otherwise). Created if missing.
pub fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("LMS_TEST_ARTIFACTS_DIR").map_or_else(|| std::env::temp_dir().join("lms-test-artifacts"), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// What to do with a page.
#[derive(Debug, Clone)]
pub struct Visit {
    /// Virtual time the page's scripts get before the DOM is read, in milliseconds.
    pub virtual_time_budget_ms: u64,
    /// Window size for screenshots: width, height.
    pub window: (u32, u32),
}

impl Default for Visit {
    fn default() -> Self {
        Visit { virtual_time_budget_ms: 10_000, window: (1280, 1600) }
    }
}

impl Visit {
    /// Loads `url` and returns the serialised DOM after the virtual-time budget (what
    /// `--dump-dom` prints). Panics, with Chromium's output, when Chromium fails.
    pub fn dump_dom(&self, url: &str) -> String {
        let out = self.run(&["--dump-dom".to_owned(), url.to_owned()]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Loads `url` and saves a PNG screenshot of the window to `path`.
    pub fn screenshot(&self, url: &str, path: &Path) {
        let (w, h) = self.window;
        self.run(&[format!("--screenshot={}", path.display()), format!("--window-size={w},{h}"), url.to_owned()]);
        assert!(path.exists(), "Chromium wrote no screenshot to {}", path.display());
    }

    fn run(&self, args: &[String]) -> Output {
        let profile = std::env::temp_dir().join(format!("lms-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).expect("chromium profile dir");
        let bin = chromium_bin();
        let mut child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--mute-audio",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--virtual-time-budget={}", self.virtual_time_budget_ms))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} (LMS_CHROMIUM_BIN): {e}", bin.display()));
        // Drain the pipes on threads so that a chatty Chromium never blocks on a full pipe.
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let out_reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
            v
        });
        let err_reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut v);
            v
        });
        // Wait for the exit on a thread; kill by pid if it does not come within the timeout.
        let pid = child.id();
        let (exited, exit) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = exited.send(child.wait());
        });
        let status = match exit.recv_timeout(RUN_TIMEOUT) {
            Ok(status) => status.expect("waiting for chromium"),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                let _ = waiter.join();
                let _ = std::fs::remove_dir_all(&profile);
                panic!("Chromium did not finish within {RUN_TIMEOUT:?}: {args:?}");
            }
        };
        let out = Output { status, stdout: out_reader.join().unwrap_or_default(), stderr: err_reader.join().unwrap_or_default() };
        let _ = std::fs::remove_dir_all(&profile);
        assert!(out.status.success(), "Chromium failed ({}) on {args:?}:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        out
    }
}

/// The value of attribute `attr` of every element of `dom` whose opening tag contains
/// `marker` (for example `id="health-lag"`), in document order. A plain text scan of the
/// serialised DOM, enough for the attributes the pages under test write.
pub fn attribute_values(dom: &str, marker: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(marker) {
        let tag_start = rest[..at].rfind('<').unwrap_or(0);
        let tag_end = rest[at..].find('>').map_or(rest.len(), |e| at + e);
        let tag = &rest[tag_start..tag_end];
        let needle = format!(" {attr}=\"");
        if let Some(p) = tag.find(&needle) {
            let v = &tag[p + needle.len()..];
            out.push(v[..v.find('"').unwrap_or(v.len())].to_owned());
        }
        rest = &rest[tag_end.min(rest.len())..];
        if tag_end == 0 {
            break;
        }
    }
    out
}

/// The inner text of the element whose opening tag contains `marker`, up to its first
/// closing tag: enough for leaf elements such as messages and figures.
pub fn inner_text(dom: &str, marker: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let open_end = at + dom[at..].find('>')? + 1;
    let close = open_end + dom[open_end..].find("</")?;
    Some(dom[open_end..close].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_found_by_marker() {
        let dom = r#"<div><svg id="a" class="chart" data-points="3"></svg><svg class="chart" id="b" data-points="0"><title>x</title></svg></div>"#;
        assert_eq!(attribute_values(dom, "class=\"chart\"", "data-points"), ["3", "0"]);
        assert_eq!(attribute_values(dom, "id=\"b\"", "data-points"), ["0"]);
        assert_eq!(inner_text(r#"<p id="m">hello</p>"#, r#"id="m""#), Some("hello".to_owned()));
    }
}
