//! Small helpers shared by the subcommands: locating the workspace and programs,
//! free ports, polling with a deadline, a minimal HTTP client, process signals
//! and log tails. Everything here uses the standard library only.

use std::{
    env, fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Every expected failure is reported as a message that says what failed;
/// `main` prints it and exits with a non-zero code.
pub type Result<T, E = String> = std::result::Result<T, E>;

/// How long the poll helper waits between two attempts.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The root of the Cargo workspace, which is the parent of this crate's directory.
///
/// `cargo run` (the `cargo xtask` alias) tells the running binary where its manifest is;
/// the path compiled in is only the fallback. Clones sharing one `CARGO_TARGET_DIR` reuse
/// each other's unchanged build of xtask, so the compiled-in path can name another clone
/// (one that may be gone).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().map_or_else(|| manifest_dir.clone(), Path::to_path_buf)
}

/// The Cargo target directory: `$CARGO_TARGET_DIR` when it is set (relative
/// values are taken relative to the current directory, as Cargo does), else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|value| !value.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() { dir } else { env::current_dir().map_or(dir.clone(), |cwd| cwd.join(&dir)) }
        }
        None => workspace_root().join("target"),
    }
}

/// The `cargo` binary that started xtask (Cargo sets `$CARGO` for `cargo run`),
/// falling back to whatever `cargo` is on the `PATH`.
pub fn cargo() -> PathBuf {
    env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// Whether the file at `path` exists and is executable by someone.
pub fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Finds an executable called `name` in the directories of `$PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

/// Whether this process runs as root, read from `/proc/self/status` because the
/// standard library has no `getuid`.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status.lines().find_map(|line| line.strip_prefix("Uid:")).and_then(|uids| uids.split_whitespace().next()) == Some("0")
    })
}

/// Runs a command with no stdin and reports whether it exited successfully.
/// Its output is discarded; a command that cannot be started counts as failed.
pub fn succeeds(command: &mut Command) -> bool {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|status| status.success())
}

/// Runs a command with no stdin and inherited stdout and stderr, and fails
/// unless it exits successfully.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command.stdin(Stdio::null()).status().map_err(|error| format!("could not run {command:?}: {error}"))?;
    if status.success() { Ok(()) } else { Err(format!("{command:?} failed ({status})")) }
}

/// Runs a command with no stdin, capturing its output, and fails with that
/// output unless the command exits successfully.
pub fn run_captured(command: &mut Command) -> Result<String> {
    let output = command.stdin(Stdio::null()).output().map_err(|error| format!("could not run {command:?}: {error}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{command:?} failed ({}); its output was:\n{}", output.status, text.trim_end()))
    }
}

/// Finds `N` distinct free TCP ports on the loopback interface by binding
/// port 0 `N` times at once and releasing the listeners afterwards.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("could not bind a free port on 127.0.0.1: {error}"))?;
    let ports = listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("could not read the address of a bound port: {error}"))?;
    ports.try_into().map_err(|_| "the number of free ports found differs from the number requested".to_owned())
}

/// A loopback socket address.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The outcome of one attempt made by [`poll_until`].
pub enum Attempt<T> {
    /// The condition holds; polling stops with this value.
    Ready(T),
    /// The condition does not hold yet, for the reason given.
    NotYet(String),
    /// The condition can never hold (for example, the process exited).
    Failed(String),
}

/// Calls `attempt` until it reports readiness or failure, or until `timeout`
/// has passed. This is the only place where xtask sleeps.
pub fn poll_until<T>(what: &str, timeout: Duration, mut attempt: impl FnMut() -> Attempt<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Attempt::Ready(value) => return Ok(value),
            Attempt::Failed(reason) => return Err(reason),
            Attempt::NotYet(reason) => {
                if Instant::now() >= deadline {
                    return Err(format!("{what} did not happen within {} s (last attempt: {reason})", timeout.as_secs()));
                }
            }
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Sends a plain HTTP/1.0 GET request for `path` to `addr` and returns the
/// status code and the body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|error| format!("could not connect to {addr}: {error}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| format!("could not set socket timeouts: {error}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|error| format!("could not send a request to {addr}: {error}"))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|error| format!("could not read the response from {addr}: {error}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("{addr} sent an incomplete HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{addr} sent a malformed HTTP status line"))?;
    Ok((status, body.to_owned()))
}

/// Sends a Kafka `ApiVersions` v0 request to `addr` and checks that the broker
/// answers it without an error, which shows that it serves Kafka requests.
pub fn kafka_api_versions(addr: SocketAddr, timeout: Duration) -> Result<()> {
    const API_VERSIONS: i16 = 18;
    const CORRELATION_ID: i32 = 0x1a2b_3c4d;
    const CLIENT_ID: &[u8] = b"xtask";
    // The client id's length as the protocol's 16-bit string length.
    const CLIENT_ID_LEN: i16 = 5;

    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|error| format!("could not connect to {addr}: {error}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| format!("could not set socket timeouts: {error}"))?;

    // Request header v1: api key, api version, correlation id, client id; the v0 body is empty.
    let mut body = Vec::new();
    body.extend_from_slice(&API_VERSIONS.to_be_bytes());
    body.extend_from_slice(&0_i16.to_be_bytes());
    body.extend_from_slice(&CORRELATION_ID.to_be_bytes());
    body.extend_from_slice(&CLIENT_ID_LEN.to_be_bytes());
    body.extend_from_slice(CLIENT_ID);
    let size = i32::try_from(body.len()).map_err(|_| "the ApiVersions request is too long".to_owned())?;
    let mut request = size.to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    stream.write_all(&request).map_err(|error| format!("could not send ApiVersions to {addr}: {error}"))?;

    // Response: size, correlation id, error code, then the list of versions.
    let mut size = [0; 4];
    stream.read_exact(&mut size).map_err(|error| format!("no ApiVersions response from {addr}: {error}"))?;
    let size = usize::try_from(i32::from_be_bytes(size)).unwrap_or(0);
    if size < 6 {
        return Err(format!("{addr} sent an ApiVersions response of {size} bytes"));
    }
    let mut response = vec![0; size];
    stream.read_exact(&mut response).map_err(|error| format!("truncated ApiVersions response from {addr}: {error}"))?;
    let correlation_id = i32::from_be_bytes([response[0], response[1], response[2], response[3]]);
    let error_code = i16::from_be_bytes([response[4], response[5]]);
    if correlation_id != CORRELATION_ID {
        Err(format!("{addr} answered ApiVersions with correlation id {correlation_id}"))
    } else if error_code != 0 {
        Err(format!("{addr} answered ApiVersions with error code {error_code}"))
    } else {
        Ok(())
    }
}

/// Sends a signal (by name, such as `TERM`) to a process. The standard library
/// can only send `SIGKILL` to its own children, so this uses the shell's `kill`.
pub fn signal(pid: u32, name: &str) -> bool {
    succeeds(Command::new("sh").args(["-c", r#"kill -s "$1" "$2""#, "sh", name, &pid.to_string()]))
}

/// Whether a process with this id exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may contain spaces.
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z")
    })
}

/// The current working directory of a process, if it can be read.
pub fn process_cwd(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The last `lines` lines of a log file, indented, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let mut out = format!("--- last lines of {} ---\n", path.display());
            for line in &all[start..] {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
            out
        }
        Err(error) => format!("--- {} could not be read: {error} ---\n", path.display()),
    }
}

/// Quotes a value for a POSIX shell with single quotes.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Removes a directory tree if it exists.
pub fn remove_dir_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(format!("could not remove {}: {error}", path.display())),
    }
}

/// Creates a directory and its parents, with a message that names it on failure.
pub fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|error| format!("could not create {}: {error}", path.display()))
}

/// Below this much free space on the target directory's file system, [`prune_target`]
/// frees what a build can recreate.
const MIN_FREE_BYTES: u64 = 20 << 30;

/// Keeps a long-lived target directory (CI reuses one across clean clones, and every clone
/// path gives the workspace's artifacts new hashes) from filling the disk: when less than
/// 20 GiB is free, removes the incremental caches and the test and binary executables of
/// `debug/deps` that no build touched in the last hour (an earlier run's). Builds recreate them.
pub fn prune_target() {
    let target = target_dir();
    let Some(free) = free_bytes(&target) else { return };
    if free >= MIN_FREE_BYTES {
        return;
    }
    let mut freed = 0u64;
    for profile in ["debug", "release"] {
        let incremental = target.join(profile).join("incremental");
        freed += dir_size(&incremental);
        let _ = fs::remove_dir_all(&incremental);
    }
    let stale = Duration::from_secs(3600);
    if let Ok(entries) = fs::read_dir(target.join("debug").join("deps")) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            let old = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age > stale);
            // Executables have no extension; libraries (.rlib, .rmeta, .so, .d) stay.
            if old && meta.is_file() && path.extension().is_none() && is_executable(&path) {
                freed += meta.len();
                let _ = fs::remove_file(&path);
            }
        }
    }
    println!(
        "xtask: {} GiB free in {}; pruned {} GiB of incremental caches and stale executables",
        free >> 30,
        target.display(),
        freed >> 30
    );
}

fn free_bytes(path: &Path) -> Option<u64> {
    fs::create_dir_all(path).ok()?;
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().nth(1)?.trim().parse().ok()
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
