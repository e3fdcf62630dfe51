//! Starting the real services the tests talk to, and stopping them again.
//!
//! Every service runs on free loopback ports with its data under
//! `<target>/xtask/services/`. Each running service is owned by a guard whose
//! `Drop` stops it, so services are stopped when the test run fails, when a
//! later service fails to start and when xtask panics. Processes that survive a
//! killed xtask are recorded in a pid file and stopped by the next run.

use std::{
    env,
    fs::{self, File, OpenOptions},
    hash::{DefaultHasher, Hash as _, Hasher as _},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    install,
    util::{self, Attempt, Result},
};

/// How long tansu may take to accept Kafka requests.
const TANSU_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long PostgreSQL and ClickHouse may take to accept queries.
const DATABASE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to exit after being asked to.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The timeout of a single readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The ClickHouse configuration installed by the Debian package; the command
/// line overrides its ports and paths.
const CLICKHOUSE_CONFIG: &str = "/etc/clickhouse-server/config.xml";
/// Unix socket paths longer than this are refused by the kernel (108 bytes
/// including the terminating zero).
const MAX_SOCKET_PATH: usize = 107;

/// Where the services and the tests keep their files.
pub struct Layout {
    /// `<target>/xtask/services`: one directory per service, plus the pid file.
    pub services: PathBuf,
    /// `<target>/xtask/artifacts`: screenshots and reports written by tests.
    pub artifacts: PathBuf,
}

impl Layout {
    /// The layout under the current Cargo target directory.
    pub fn new() -> Self {
        let xtask = util::target_dir().join("xtask");
        Self { services: xtask.join("services"), artifacts: xtask.join("artifacts") }
    }

    /// Stops processes left over by a previous run, removes that run's files
    /// and creates empty directories for this run.
    fn reset(&self) -> Result<PidFile> {
        stop_leftovers(&self.services)?;
        // PostgreSQL's directory may be a link to a directory outside the build tree.
        let postgres = self.services.join("postgres");
        if fs::symlink_metadata(&postgres).is_ok_and(|meta| meta.file_type().is_symlink())
            && let Ok(outside) = fs::read_link(&postgres)
        {
            util::remove_dir_if_exists(&outside)?;
        }
        util::remove_dir_if_exists(&self.services)?;
        util::remove_dir_if_exists(&self.artifacts)?;
        util::create_dir(&self.services)?;
        util::create_dir(&self.artifacts)?;
        Ok(PidFile { path: self.services.join("pids") })
    }
}

/// The programs the services run, located after installation.
struct Tools {
    tansu: PathBuf,
    postgres_bin: PathBuf,
    clickhouse_server: PathBuf,
}

impl Tools {
    fn locate() -> Result<Self> {
        let tansu = install::find_tansu()
            .ok_or_else(|| format!("tansu {} was not found on the PATH or in ~/.cargo/bin", install::TANSU_VERSION))?;
        let postgres_bin = install::postgres_bin_dir().ok_or("PostgreSQL was not found under /usr/lib/postgresql/*/bin")?;
        let clickhouse_server = util::find_on_path("clickhouse-server").ok_or("clickhouse-server is not on the PATH")?;
        if !Path::new(CLICKHOUSE_CONFIG).is_file() {
            return Err(format!("the ClickHouse configuration {CLICKHOUSE_CONFIG} is missing"));
        }
        Ok(Self { tansu, postgres_bin, clickhouse_server })
    }
}

/// The loopback ports of the running services.
struct Ports {
    kafka: u16,
    kafka_durable: u16,
    postgres: u16,
    clickhouse_http: u16,
}

/// All running services. Dropping this stops them.
pub struct Services {
    // The guards stop their service when dropped, in this order.
    _kafka: ServiceProcess,
    _kafka_durable: ServiceProcess,
    _clickhouse: ServiceProcess,
    _postgres: Postgres,
    ports: Ports,
    tansu: PathBuf,
    services_dir: PathBuf,
    artifacts_dir: PathBuf,
}

impl Services {
    /// Starts every service and waits until each one answers.
    pub fn start(layout: &Layout) -> Result<Self> {
        let tools = Tools::locate()?;
        let pids = layout.reset()?;
        let [kafka_port, durable_port, postgres_port, ch_http, ch_tcp, ch_interserver] = util::free_ports::<6>()?;
        let dir = &layout.services;

        // The processes that need no set-up are started first so that they come
        // up while PostgreSQL is being initialised.
        let mut kafka = spawn_tansu("tansu (memory engine)", &tools.tansu, &dir.join("kafka"), kafka_port, "memory://tansu/", &pids)?;
        let mut kafka_durable =
            spawn_tansu("tansu (sqlite engine)", &tools.tansu, &dir.join("kafka-durable"), durable_port, "sqlite://tansu.db", &pids)?;
        let mut clickhouse = spawn_clickhouse(&tools.clickhouse_server, &dir.join("clickhouse"), [ch_http, ch_tcp, ch_interserver], &pids)?;
        let postgres = Postgres::start(&tools.postgres_bin, dir, postgres_port, &pids)?;

        wait_for_kafka(&mut kafka, kafka_port)?;
        wait_for_kafka(&mut kafka_durable, durable_port)?;
        wait_for_clickhouse(&mut clickhouse, ch_http)?;
        postgres.wait_ready()?;

        Ok(Self {
            _kafka: kafka,
            _kafka_durable: kafka_durable,
            _clickhouse: clickhouse,
            _postgres: postgres,
            ports: Ports { kafka: kafka_port, kafka_durable: durable_port, postgres: postgres_port, clickhouse_http: ch_http },
            tansu: tools.tansu,
            services_dir: layout.services.clone(),
            artifacts_dir: layout.artifacts.clone(),
        })
    }

    /// The environment variables that tell the tests where the services are.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let ports = &self.ports;
        vec![
            ("LMS_TEST_KAFKA_BROKERS", format!("127.0.0.1:{}", ports.kafka)),
            ("LMS_TEST_KAFKA_DURABLE_BROKERS", format!("127.0.0.1:{}", ports.kafka_durable)),
            ("LMS_TEST_POSTGRES_URL", format!("postgres://postgres@127.0.0.1:{}/postgres", ports.postgres)),
            ("LMS_TEST_CLICKHOUSE_URL", format!("http://127.0.0.1:{}", ports.clickhouse_http)),
            ("LMS_TANSU_BIN", self.tansu.to_string_lossy().into_owned()),
            ("LMS_TEST_SERVICES_DIR", self.services_dir.to_string_lossy().into_owned()),
            ("LMS_TEST_ARTIFACTS_DIR", self.artifacts_dir.to_string_lossy().into_owned()),
        ]
    }

    /// Writes the environment as shell `export` lines to `<services>/env`, so
    /// that another shell can `source` it, and returns the file's path.
    pub fn write_env_file(&self) -> Result<PathBuf> {
        let path = self.services_dir.join("env");
        let text: String = self.env().iter().map(|(name, value)| format!("export {name}={}\n", util::shell_quote(value))).collect();
        fs::write(&path, text).map_err(|error| format!("could not write {}: {error}", path.display()))?;
        Ok(path)
    }
}

/// Records the processes started by this run, one per line as
/// `pid<TAB>signal<TAB>working directory`, so that the next run can stop them
/// if this run is killed before it stops them itself. The working directory
/// guards against signalling an unrelated process that reuses the pid.
struct PidFile {
    path: PathBuf,
}

impl PidFile {
    fn record(&self, pid: u32, signal: &str, cwd: &Path) -> Result<()> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut file| writeln!(file, "{pid}\t{signal}\t{}", cwd.display()))
            .map_err(|error| format!("could not write {}: {error}", self.path.display()))
    }
}

/// Stops the processes recorded in a previous run's pid file that are still
/// running in that run's directories.
fn stop_leftovers(services: &Path) -> Result<()> {
    let Ok(text) = fs::read_to_string(services.join("pids")) else {
        return Ok(());
    };
    let mut signalled = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(pid), Some(signal), Some(cwd)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if util::process_alive(pid) && process_runs_in(pid, cwd) {
            println!("stopping process {pid} left over from a previous run (SIG{signal})");
            util::signal(pid, signal);
            signalled.push(pid);
        }
    }
    let all_exited = || {
        if signalled.iter().all(|pid| !util::process_alive(*pid)) {
            Attempt::Ready(())
        } else {
            Attempt::NotYet("some are still running".to_owned())
        }
    };
    if util::poll_until("the exit of leftover processes", STOP_TIMEOUT, all_exited).is_ok() {
        return Ok(());
    }
    for pid in &signalled {
        util::signal(*pid, "KILL");
    }
    util::poll_until("the exit of killed leftover processes", STOP_TIMEOUT, all_exited)
}

/// Whether the process's working directory is `dir` or inside it (possibly deleted).
fn process_runs_in(pid: u32, dir: &str) -> bool {
    util::process_cwd(pid).is_some_and(|cwd| {
        let cwd = cwd.to_string_lossy();
        cwd.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with(" (deleted)"))
    })
}

/// A service running as a child process of xtask. Dropping it stops the
/// process: first with SIGTERM, then with SIGKILL if it does not exit in time.
struct ServiceProcess {
    name: &'static str,
    child: Child,
    logs: Vec<PathBuf>,
    stopped: bool,
}

impl ServiceProcess {
    /// Starts `command` in `dir` with its output going to `<dir>/<log>` and
    /// records it in the pid file.
    fn spawn(name: &'static str, command: &mut Command, dir: &Path, log: &str, pids: &PidFile) -> Result<Self> {
        let log = dir.join(log);
        let output = File::create(&log).map_err(|error| format!("could not create {}: {error}", log.display()))?;
        let errors = output.try_clone().map_err(|error| format!("could not duplicate the handle of {}: {error}", log.display()))?;
        let child = command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .map_err(|error| format!("could not start {name} ({command:?}): {error}"))?;
        let process = Self { name, child, logs: vec![log], stopped: false };
        pids.record(process.child.id(), "KILL", dir)?;
        Ok(process)
    }

    /// Fails if the process has exited.
    fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited ({status})", self.name)),
            Err(error) => Err(format!("could not check on {}: {error}", self.name)),
        }
    }

    /// Polls `probe` until it succeeds, failing early if the process exits;
    /// on failure the message ends with the tails of the service's logs.
    fn wait_ready(&mut self, timeout: Duration, mut probe: impl FnMut() -> Result<()>) -> Result<()> {
        let what = format!("{} becoming ready", self.name);
        let result = util::poll_until(&what, timeout, || {
            if let Err(error) = self.check_running() {
                return Attempt::Failed(error);
            }
            match probe() {
                Ok(()) => Attempt::Ready(()),
                Err(error) => Attempt::NotYet(error),
            }
        });
        result.map_err(|error| {
            let tails: String = self.logs.iter().map(|log| util::tail(log, 30)).collect();
            format!("{error}\n{tails}")
        })
    }

    /// Stops the process and waits for it to exit.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            eprintln!("{} had already exited", self.name);
            return;
        }
        util::signal(self.child.id(), "TERM");
        let exited = util::poll_until(&format!("the exit of {}", self.name), STOP_TIMEOUT, || match self.child.try_wait() {
            Ok(Some(_)) => Attempt::Ready(()),
            Ok(None) => Attempt::NotYet("still running after SIGTERM".to_owned()),
            Err(error) => Attempt::Failed(error.to_string()),
        });
        if exited.is_err() {
            eprintln!("{} did not exit after SIGTERM; killing it", self.name);
            // Killing fails only if the process has already been reaped.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        println!("stopped {}", self.name);
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a tansu broker listening on `port`, with `dir` as its working
/// directory (relative storage paths such as `sqlite://tansu.db` resolve there).
fn spawn_tansu(name: &'static str, tansu: &Path, dir: &Path, port: u16, storage_engine: &str, pids: &PidFile) -> Result<ServiceProcess> {
    util::create_dir(dir)?;
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(tansu);
    command
        .arg("broker")
        .args(["--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        .args(["--storage-engine", storage_engine])
        // tansu reads these from the environment too; the developer's values must not leak in.
        .env_remove("SCHEMA_REGISTRY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let process = ServiceProcess::spawn(name, &mut command, dir, "tansu.log", pids)?;
    println!("started {name} on 127.0.0.1:{port} (log: {})", dir.join("tansu.log").display());
    Ok(process)
}

/// Waits until the tansu broker answers a Kafka `ApiVersions` request.
fn wait_for_kafka(process: &mut ServiceProcess, port: u16) -> Result<()> {
    process.wait_ready(TANSU_READY_TIMEOUT, || util::kafka_api_versions(util::loopback(port), PROBE_TIMEOUT))?;
    println!("{} is ready", process.name);
    Ok(())
}

/// Starts a private ClickHouse server in `dir`, using the packaged
/// configuration with ports, paths and logs overridden on the command line.
fn spawn_clickhouse(server: &Path, dir: &Path, [http, tcp, interserver]: [u16; 3], pids: &PidFile) -> Result<ServiceProcess> {
    for sub in ["data", "tmp", "user_files", "format_schemas"] {
        util::create_dir(&dir.join(sub))?;
    }
    // ClickHouse wants its directory settings to end with a slash.
    let sub = |name: &str| format!("{}/", dir.join(name).display());
    let mut command = Command::new(server);
    command
        .arg(format!("--config-file={CLICKHOUSE_CONFIG}"))
        .arg("--")
        .arg(format!("--path={}", sub("data")))
        .arg(format!("--tmp_path={}", sub("tmp")))
        .arg(format!("--user_files_path={}", sub("user_files")))
        .arg(format!("--format_schema_path={}", sub("format_schemas")))
        .arg(format!("--http_port={http}"))
        .arg(format!("--tcp_port={tcp}"))
        .arg(format!("--interserver_http_port={interserver}"))
        .arg("--listen_host=127.0.0.1")
        .arg(format!("--logger.log={}", dir.join("server.log").display()))
        .arg(format!("--logger.errorlog={}", dir.join("error.log").display()))
        .arg("--logger.console=0");
    let mut process = ServiceProcess::spawn("clickhouse", &mut command, dir, "stdout.log", pids)?;
    process.logs.push(dir.join("error.log"));
    println!("started clickhouse on 127.0.0.1:{http} (http), {tcp} (native), {interserver} (interserver) (logs: {})", dir.display());
    Ok(process)
}

/// Waits until ClickHouse answers `SELECT 1` over HTTP.
fn wait_for_clickhouse(process: &mut ServiceProcess, http_port: u16) -> Result<()> {
    process.wait_ready(DATABASE_READY_TIMEOUT, || {
        let (status, body) = util::http_get(util::loopback(http_port), "/?query=SELECT%201", PROBE_TIMEOUT)?;
        if status == 200 && body.trim() == "1" { Ok(()) } else { Err(format!("SELECT 1 answered {status}: {}", body.trim())) }
    })?;
    println!("clickhouse is ready");
    Ok(())
}

/// A private PostgreSQL cluster managed with `pg_ctl`. Dropping it stops the
/// server with `pg_ctl stop -m fast`.
///
/// `pg_ctl` detaches the server into its own session, so a Ctrl-C in the
/// terminal does not reach it; the next run stops it through the pid file.
struct Postgres {
    bin: PathBuf,
    /// The directory holding the data directory, the socket and the log.
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// PostgreSQL refuses to run as root, so as root it runs as `postgres`.
    as_postgres_user: bool,
    running: bool,
}

impl Postgres {
    /// Initialises a cluster under `<services>/postgres` and starts it.
    fn start(bin: &Path, services: &Path, port: u16, pids: &PidFile) -> Result<Self> {
        let as_postgres_user = util::is_root();
        let root = postgres_root(services, as_postgres_user)?;
        let mut postgres = Self {
            bin: bin.to_path_buf(),
            data: root.join("data"),
            log: root.join("postgres.log"),
            root,
            port,
            as_postgres_user,
            running: false,
        };
        util::run_captured(
            postgres
                .command("initdb")
                .arg("-D")
                .arg(&postgres.data)
                .args(["-A", "trust", "-U", "postgres", "--encoding=UTF8", "--locale=C.UTF-8"])
                // Skipping initdb's final flush to disk makes it much faster; the server itself keeps fsync on.
                .arg("--no-sync"),
        )?;

        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            util::shell_quote(&postgres.root.to_string_lossy())
        );
        // From here on, dropping the guard runs `pg_ctl stop`, which is harmless
        // if the server did not start.
        postgres.running = true;
        util::run_captured(
            postgres.command("pg_ctl").arg("-D").arg(&postgres.data).args(["-o", &options]).arg("-l").arg(&postgres.log).args([
                "-w",
                "-t",
                &DATABASE_READY_TIMEOUT.as_secs().to_string(),
                "start",
            ]),
        )
        .map_err(|error| format!("{error}\n{}", util::tail(&postgres.log, 30)))?;

        // The first line of postmaster.pid is the server's pid. SIGQUIT makes
        // PostgreSQL shut down immediately, taking its child processes along.
        let pid_file = postgres.data.join("postmaster.pid");
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("could not read the server pid from {}", pid_file.display()))?;
        pids.record(pid, "QUIT", &postgres.data)?;
        println!("started postgresql on 127.0.0.1:{port} (log: {})", postgres.log.display());
        Ok(postgres)
    }

    /// A command running one of PostgreSQL's programs, as the `postgres` user
    /// when xtask runs as root, in a directory that user can enter.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres_user {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            Command::new(program)
        };
        command.current_dir(&self.root);
        command
    }

    /// Waits until the server accepts connections over TCP.
    fn wait_ready(&self) -> Result<()> {
        let port = self.port.to_string();
        let mut pg_isready = Command::new(self.bin.join("pg_isready"));
        pg_isready.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres"]);
        util::poll_until("postgresql becoming ready", DATABASE_READY_TIMEOUT, || {
            if util::succeeds(&mut pg_isready) { Attempt::Ready(()) } else { Attempt::NotYet("pg_isready failed".to_owned()) }
        })
        .map_err(|error| format!("{error}\n{}", util::tail(&self.log, 30)))?;
        println!("postgresql is ready");
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !std::mem::replace(&mut self.running, false) {
            return;
        }
        let timeout = STOP_TIMEOUT.as_secs().to_string();
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(&self.data).args(["-m", "fast", "-w", "-t", &timeout, "stop"]);
        match util::run_captured(&mut stop) {
            Ok(_) => println!("stopped postgresql"),
            Err(error) => eprintln!("could not stop postgresql: {error}"),
        }
    }
}

/// The directory for PostgreSQL's files: `<services>/postgres` when the
/// server can use it, else a directory in the system's temporary directory
/// that `<services>/postgres` links to. The server cannot use the build tree
/// when, running as `postgres`, it cannot reach it (a target directory under
/// `/root` is a common case), or when the path of its Unix socket would be too long.
fn postgres_root(services: &Path, as_postgres_user: bool) -> Result<PathBuf> {
    let preferred = services.join("postgres");
    util::create_dir(&preferred)?;
    if as_postgres_user {
        give_to_postgres(&preferred)?;
    }
    let socket_path_len = preferred.as_os_str().len() + "/.s.PGSQL.65535".len();
    let reachable = !as_postgres_user
        || util::succeeds(Command::new("runuser").args(["-u", "postgres", "--", "test", "-w"]).arg(&preferred).current_dir("/"));
    if reachable && socket_path_len <= MAX_SOCKET_PATH {
        return Ok(preferred);
    }

    let mut hasher = DefaultHasher::new();
    services.hash(&mut hasher);
    let outside = env::temp_dir().join(format!("lms-xtask-postgres-{:016x}", hasher.finish()));
    util::remove_dir_if_exists(&outside)?;
    util::create_dir(&outside)?;
    if as_postgres_user {
        give_to_postgres(&outside)?;
    }
    fs::remove_dir(&preferred)
        .and_then(|()| std::os::unix::fs::symlink(&outside, &preferred))
        .map_err(|error| format!("could not link {} to {}: {error}", preferred.display(), outside.display()))?;
    println!(
        "note: PostgreSQL cannot use {} (not reachable by the postgres user, or the socket path is too long), \
         so its files are in {} (linked from there)",
        preferred.display(),
        outside.display()
    );
    Ok(outside)
}

/// Makes the `postgres` user the owner of a directory.
fn give_to_postgres(dir: &Path) -> Result<()> {
    util::run_captured(Command::new("chown").arg("postgres").arg(dir)).map(drop)
}
