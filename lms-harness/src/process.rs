//! Starting `lms` processes: the one place a test, a scenario's [`crate::deploy::Fleet`] or a
//! benchmark starts the binary under test.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The `lms` binary under test (`LMS_BIN`; `cargo xtask test` builds it and sets it).
pub fn lms_bin() -> String {
    std::env::var("LMS_BIN").expect("LMS_BIN: the lms binary (run the tests with `cargo xtask test`, which builds it)")
}

/// A process the test started; killed (SIGKILL) and reaped when dropped, so a failing test
/// leaves none behind.
pub struct Proc(pub Child);

impl Proc {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Kills it with SIGKILL (a crash: nothing drained or committed) and reaps it.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()?;
        self.0.wait().map(drop)
    }

    /// Stops it with SIGTERM (an `lms` process drains, commits and exits) and waits for it.
    pub fn terminate(&mut self) -> std::io::Result<std::process::ExitStatus> {
        terminate(&mut self.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.kill();
        }
    }
}

/// Starts `bin <args>` with `env` added, stdout discarded and stderr (the logs) in the file
/// `log`: how every harness starts a long-running `lms` process.
pub fn spawn_logged<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    bin: &Path,
    args: &[&str],
    env: impl IntoIterator<Item = (K, V)>,
    log: &Path,
) -> std::io::Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(bin).args(args).envs(env).stdout(Stdio::null()).stderr(log).spawn()
}

/// Stops `child` with SIGTERM (an `lms` process drains, commits and exits) and waits for it.
pub fn terminate(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    if !kill.success() {
        return Err(std::io::Error::other(format!("kill -TERM {} failed: {kill}", child.id())));
    }
    child.wait()
}

/// Starts `lms <args>` with `env` added (and `RUST_LOG=info,librdkafka=warn`), stdout
/// discarded and stderr (the logs) in `<temp dir>/<log>` for a failing test's reader.
pub fn spawn_lms(args: &[&str], env: &[(&str, String)], log: &str) -> Proc {
    let env = std::iter::once(("RUST_LOG", "info,librdkafka=warn")).chain(env.iter().map(|(k, v)| (*k, v.as_str())));
    let bin = lms_bin();
    Proc(spawn_logged(Path::new(&bin), args, env, &std::env::temp_dir().join(log)).expect("start lms"))
}

/// What a finished `lms` command did.
pub struct LmsOutput {
    /// Whether it exited successfully.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error (the logs, warnings only unless `env` sets `RUST_LOG`).
    pub stderr: String,
}

/// Runs `lms <args>` with `env` added to completion (off the async workers) and returns
/// what it printed.
pub fn run_lms(args: &[&str], env: &[(&str, String)]) -> LmsOutput {
    let mut cmd = Command::new(lms_bin());
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::block_in_place(|| cmd.output()).expect("run lms");
    LmsOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The environment of the `lms api` and `lms processor run` processes of one test
/// deployment: the broker and topic prefix, the state store, the Parquet analytics twin in
/// the temporary directory, the API on `api_port` with `jwt_secret`, short batch waits.
/// Tests add what is particular to them.
pub fn lms_env(brokers: &str, prefix: &str, store: &str, api_port: u16, jwt_secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LMS_KAFKA__BROKERS", brokers.to_owned()),
        ("LMS_KAFKA__TOPIC_PREFIX", prefix.to_owned()),
        ("LMS_STORE__URL", store.to_owned()),
        ("LMS_ANALYTICS__STORE", "parquet".to_owned()),
        ("LMS_ANALYTICS__DIR", std::env::temp_dir().join(format!("{prefix}analytics")).display().to_string()),
        ("LMS_CONSUMER__MAX_BATCH_WAIT_MS", "50".to_owned()),
        ("LMS_API__LISTEN", format!("127.0.0.1:{api_port}")),
        ("LMS_JWT_SECRET", jwt_secret.to_owned()),
    ]
}
