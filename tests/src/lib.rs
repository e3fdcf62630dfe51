//! The harness the integration tests share: where the real services are, unique names
//! per test, polling with a deadline, and brokers a test can start and kill itself.
//!
//! Service addresses come from the environment that `cargo xtask test` sets, with
//! loopback defaults for a developer who started the services by hand
//! (`cargo xtask services` prints the exports).

pub mod browser;
pub mod clickhouse;
pub mod proxy;
pub mod tls;

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// Bootstrap servers of the shared test broker (tansu, memory engine): fast, but its
/// watermarks are wrong and it cannot resume inside a record batch (see
/// `it/tansu_probe.rs`), so tests that resume a group use [`durable_kafka_brokers`].
pub fn kafka_brokers() -> String {
    std::env::var("LMS_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Bootstrap servers of the durable test broker (tansu, SQLite engine): correct watermarks.
pub fn durable_kafka_brokers() -> String {
    std::env::var("LMS_TEST_KAFKA_DURABLE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9093".to_owned())
}

/// The repository's root directory, from the `CARGO_MANIFEST_DIR` that cargo and nextest
/// set when they run a test. Not `env!`: clones sharing one `CARGO_TARGET_DIR` (CI's clone
/// and a developer's) reuse each other's unchanged test binaries, whose compiled-in path
/// names the other clone, which may be gone.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().expect("the tests package sits in the repository root").to_path_buf()
}

/// A prefix no other test uses, for topics and groups.
pub fn unique_prefix(test: &str) -> String {
    format!("t{}-{}.", &uuid::Uuid::new_v4().simple().to_string()[..10], test)
}

/// Logs of the code under test, shown when a test fails (`RUST_LOG` to tune).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it returns `Some`, or returns `None` after `timeout` (for tests
/// that explain a timeout themselves).
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a topic with `partitions` partitions (replication 1) on `brokers`.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let nt = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let res = admin
        .create_topics([&nt], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))))
        .await
        .expect("create_topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Every topic of the bundled topics file (`topics.yaml`) under a fresh prefix of `test`,
/// each with `partitions` partitions: the bus a test of the whole pipeline runs on.
pub async fn fresh_topics(brokers: &str, test: &str, partitions: i32) -> (String, lms_bus::TopicMap) {
    let prefix = unique_prefix(test);
    let topics = lms_bus::TopicsFile::bundled().topic_map(&prefix);
    for domain in lms_events::Domain::ALL {
        create_topic(brokers, topics.topic(domain), partitions).await;
    }
    (prefix, topics)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A tansu broker this test owns: it can be killed and restarted on the same port and
/// (for the SQLite engine) the same data.
pub struct OwnBroker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    durable: bool,
    /// The listener URL the broker gives clients in its metadata; its own listener when `None`.
    advertised: Option<String>,
    /// Whether clients must authenticate (SASL/SCRAM, `--authentication`).
    authentication: bool,
}

impl OwnBroker {
    /// Starts a broker; `durable` selects the SQLite engine under a fresh directory.
    pub async fn start(durable: bool) -> OwnBroker {
        Self::start_advertising(durable, None).await
    }

    /// Starts a broker that advertises `advertised` (`tcp://host:port`, such as a TLS
    /// terminator in front of it) instead of its own listener.
    pub async fn start_advertising(durable: bool, advertised: Option<String>) -> OwnBroker {
        let base = std::env::var("LMS_TEST_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
        let dir = base.join(format!("own-broker-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let mut b = OwnBroker { child: None, port: free_port(), dir, durable, advertised, authentication: false };
        b.restart().await;
        b
    }

    /// `host:port` of the broker.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a SCRAM user (`mechanism`: `scram256` or `scram512`) with tansu's own tool;
    /// before [`OwnBroker::require_authentication`] (tansu 0.6.0 refuses its own tool once
    /// clients must authenticate). Needs the durable engine to keep the users over the restart.
    pub fn create_user(&self, name: &str, password: &str, mechanism: &str) {
        let bin = std::env::var("LMS_TANSU_BIN").unwrap_or_else(|_| "tansu".to_owned());
        let broker = format!("tcp://127.0.0.1:{}", self.port);
        let out = Command::new(bin)
            .args(["user", "create", "--broker", &broker, "--mechanism", mechanism, name, password])
            .output()
            .expect("run tansu user create");
        assert!(out.status.success(), "tansu user create {name}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Restarts the broker so that every client must authenticate with SASL/SCRAM.
    pub async fn require_authentication(&mut self) {
        assert!(self.durable, "users live in the durable engine's data");
        self.authentication = true;
        self.restart().await;
    }

    /// Kills the broker with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the broker on the same port and data, and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.kill();
        let bin = std::env::var("LMS_TANSU_BIN").unwrap_or_else(|_| "tansu".to_owned());
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = self.advertised.clone().unwrap_or_else(|| url.clone());
        let engine = if self.durable { "sqlite://tansu.db".to_owned() } else { "memory://tansu/".to_owned() };
        let log = std::fs::File::create(self.dir.join("broker.log")).expect("broker log");
        let mut command = Command::new(bin);
        command.args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised, "--storage-engine", &engine]);
        if self.authentication {
            command.arg("--authentication");
        }
        let child = command.current_dir(&self.dir).stdout(Stdio::null()).stderr(log).spawn().expect("start tansu (LMS_TANSU_BIN)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually("the test broker to accept connections", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) }
        })
        .await;
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `lms` binary under test (`LMS_BIN`; `cargo xtask test` builds it and sets it).
pub fn lms_bin() -> String {
    std::env::var("LMS_BIN").expect("LMS_BIN: the lms binary (run the tests with `cargo xtask test`, which builds it)")
}

/// A process the test started; killed (SIGKILL) and reaped when dropped, so a failing test
/// leaves none behind.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `lms <args>` with `env` added, stdout discarded and stderr (the logs) in
/// `<temp dir>/<log>` for a failing test's reader.
pub fn spawn_lms(args: &[&str], env: &[(&str, String)], log: &str) -> Proc {
    let log = std::fs::File::create(std::env::temp_dir().join(log)).expect("log file");
    let mut cmd = Command::new(lms_bin());
    cmd.args(args).stdout(Stdio::null()).stderr(log).env("RUST_LOG", "info,librdkafka=warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("start lms"))
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
