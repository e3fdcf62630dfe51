//! A tansu broker a test owns: killed, restarted, made to require authentication.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::Proc;
use crate::{eventually, free_port};

/// A tansu broker this test owns: it can be killed and restarted on the same port and
/// (for the SQLite engine) the same data.
pub struct OwnBroker {
    child: Option<Proc>,
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
        // Dropping the process kills and reaps it.
        self.child = None;
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
        self.child = Some(Proc(child));
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
