//! A ClickHouse server a test owns: the packaged `clickhouse-server` with the packaged
//! configuration, ports and paths overridden (as `cargo xtask services` does), so that the
//! test can kill it and start it again on the same port and data, or give it a users file
//! of its own (ClickHouse 18.16 has no `CREATE USER`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Proc, eventually, free_port};

/// A ClickHouse server of the test's own, killed and its data removed when dropped.
pub struct OwnClickHouse {
    child: Option<Proc>,
    dir: PathBuf,
    ports: [u16; 3],
    users: Option<PathBuf>,
}

impl OwnClickHouse {
    /// Starts a server with the packaged users (`default` without a password).
    pub async fn start() -> OwnClickHouse {
        Self::start_with_users(None).await
    }

    /// Starts a server whose users file is `users_xml` (the packaged one when `None`).
    pub async fn start_with_users(users_xml: Option<&str>) -> OwnClickHouse {
        let base = std::env::var("LMS_TEST_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
        let dir = base.join(format!("own-clickhouse-{}", uuid::Uuid::new_v4().simple()));
        for sub in ["data", "tmp", "user_files", "format_schemas"] {
            std::fs::create_dir_all(dir.join(sub)).expect("clickhouse dirs");
        }
        let users = users_xml.map(|xml| {
            let path = dir.join("users.xml");
            std::fs::write(&path, xml).expect("users.xml");
            path
        });
        let mut ch = OwnClickHouse { child: None, dir, ports: [free_port(), free_port(), free_port()], users };
        ch.restart().await;
        ch
    }

    /// The HTTP port.
    pub fn http_port(&self) -> u16 {
        self.ports[0]
    }

    /// `http://127.0.0.1:<http port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port())
    }

    /// Kills the server with SIGKILL (its data stays).
    pub fn kill(&mut self) {
        // Dropping the process kills and reaps it.
        self.child = None;
    }

    /// (Re)starts the server on the same ports and data, and waits until `/ping` answers.
    pub async fn restart(&mut self) {
        self.kill();
        let bin = std::env::var("LMS_CLICKHOUSE_SERVER_BIN").unwrap_or_else(|_| "clickhouse-server".to_owned());
        let sub = |name: &str| format!("{}/", self.dir.join(name).display());
        let [http, tcp, interserver] = self.ports;
        let log = std::fs::File::create(self.dir.join("stdout.log")).expect("log");
        let mut command = Command::new(bin);
        command
            .arg("--config-file=/etc/clickhouse-server/config.xml")
            .arg("--")
            .arg(format!("--path={}", sub("data")))
            .arg(format!("--tmp_path={}", sub("tmp")))
            .arg(format!("--user_files_path={}", sub("user_files")))
            .arg(format!("--format_schema_path={}", sub("format_schemas")));
        if let Some(users) = &self.users {
            command.arg(format!("--users_config={}", users.display()));
        }
        let child = command
            .arg(format!("--http_port={http}"))
            .arg(format!("--tcp_port={tcp}"))
            .arg(format!("--interserver_http_port={interserver}"))
            .arg("--listen_host=127.0.0.1")
            .arg(format!("--logger.log={}", self.dir.join("server.log").display()))
            .arg(format!("--logger.errorlog={}", self.dir.join("error.log").display()))
            .arg("--logger.console=0")
            .current_dir(&self.dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start clickhouse-server (LMS_CLICKHOUSE_SERVER_BIN)");
        self.child = Some(Proc(child));
        // `/ping` needs no user, so it works whatever the users file says.
        let url = format!("{}/ping", self.url());
        eventually("the test's own ClickHouse to answer /ping", Duration::from_secs(60), || {
            let url = url.clone();
            async move { reqwest::get(&url).await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
    }
}

impl Drop for OwnClickHouse {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
