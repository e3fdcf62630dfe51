//! ClickHouse over HTTPS with a password: a ClickHouse server of the test's own (its users
//! file has a password user; ClickHouse 18.16 has no `CREATE USER`) behind `stunnel4` with a
//! certificate authority the test makes. The store pings, migrates, takes the generated
//! stream and answers every analytics query as the oracle does, over that connection; a
//! wrong password and an untrusted certificate fail with errors that say so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use lms_analytics::{AnalyticsStore, ClickHouseConfig, ClickHouseStore};
use lms_bus::Secret;
use tests::tls::{TestCa, TlsTerminator};
use tests::{eventually, free_port, init_logs};

use crate::analytics_common::{Oracle, answers, assert_same, generate, oracle_answers, queries};

const USER: &str = "lms_tls";
const PASSWORD: &str = "tls-test-password";

/// A ClickHouse server with the password user `USER`, killed when dropped.
struct OwnClickHouse {
    child: Child,
    http: u16,
    dir: PathBuf,
}

impl OwnClickHouse {
    async fn start() -> OwnClickHouse {
        let base = std::env::var("LMS_TEST_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
        let dir = base.join(format!("own-clickhouse-{}", uuid::Uuid::new_v4().simple()));
        for sub in ["data", "tmp", "user_files", "format_schemas"] {
            std::fs::create_dir_all(dir.join(sub)).expect("clickhouse dirs");
        }
        let users = dir.join("users.xml");
        std::fs::write(
            &users,
            format!(
                "<yandex>\n<profiles><default></default></profiles>\n<users>\n\
                 <{USER}><password>{PASSWORD}</password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></{USER}>\n\
                 </users>\n<quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>\
                 <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>\n</yandex>\n"
            ),
        )
        .expect("users.xml");
        let [http, tcp, interserver] = [free_port(), free_port(), free_port()];
        let sub = |name: &str| format!("{}/", dir.join(name).display());
        let log = std::fs::File::create(dir.join("stdout.log")).expect("log");
        let child = Command::new("clickhouse-server")
            .arg("--config-file=/etc/clickhouse-server/config.xml")
            .arg("--")
            .arg(format!("--path={}", sub("data")))
            .arg(format!("--tmp_path={}", sub("tmp")))
            .arg(format!("--user_files_path={}", sub("user_files")))
            .arg(format!("--format_schema_path={}", sub("format_schemas")))
            .arg(format!("--users_config={}", users.display()))
            .arg(format!("--http_port={http}"))
            .arg(format!("--tcp_port={tcp}"))
            .arg(format!("--interserver_http_port={interserver}"))
            .arg("--listen_host=127.0.0.1")
            .arg(format!("--logger.log={}", dir.join("server.log").display()))
            .arg(format!("--logger.errorlog={}", dir.join("error.log").display()))
            .arg("--logger.console=0")
            .current_dir(&dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start clickhouse-server");
        let url = format!("http://127.0.0.1:{http}/ping");
        eventually("the test's ClickHouse to answer /ping", Duration::from_secs(60), || {
            let url = url.clone();
            async move { reqwest::get(&url).await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        OwnClickHouse { child, http, dir }
    }
}

impl Drop for OwnClickHouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn https_config(port: u16, ca_file: &Path, password: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        user: Some(USER.to_owned()),
        password: Some(Secret::new(password)),
        ca_file: Some(ca_file.to_owned()),
        request_timeout_ms: 10_000,
        ..ClickHouseConfig::new(format!("https://127.0.0.1:{port}"), format!("t_tls_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clickhouse_over_https_with_a_password_equals_the_oracle() {
    init_logs();
    let ch = OwnClickHouse::start().await;
    let ca = TestCa::new("clickhouse");
    let tls = TlsTerminator::start(&ca, None, &format!("127.0.0.1:{}", ch.http)).await;

    let store = ClickHouseStore::new(https_config(tls.port(), &ca.ca_file, PASSWORD)).expect("a store");
    store.migrate().await.expect("migrate over HTTPS (creates the database)");
    store.ping().await.expect("ping over HTTPS");
    let stream = generate(28, 2, 12);
    for chunk in stream.delivered.chunks(2_000) {
        let refs: Vec<&lms_events::Event> = chunk.iter().collect();
        store.insert(&refs).await.expect("insert over HTTPS");
    }
    let q = queries(2);
    let expected = oracle_answers(&Oracle::new(&stream.distinct), &q);
    let got = answers(&store as &dyn AnalyticsStore, &q).await;
    assert_same("clickhouse over https", &got, &expected);

    // A wrong password is refused by the server, and the error says so.
    let wrong = ClickHouseStore::new(https_config(tls.port(), &ca.ca_file, "not-the-password")).expect("a store");
    let err = wrong.ping().await.expect_err("a wrong password").to_string();
    assert!(err.to_lowercase().contains("password"), "{err}");

    // A certificate from another authority is refused by the client, and the error says why.
    let other = TestCa::new("other");
    let untrusting = ClickHouseStore::new(https_config(tls.port(), &other.ca_file, PASSWORD)).expect("a store");
    let err = untrusting.ping().await.expect_err("an untrusted certificate").to_string();
    assert!(err.contains("certificate") && err.contains("UnknownIssuer"), "{err}");

    // A CA file that cannot be read is a configuration error naming the server and the file.
    let missing = ca.dir.join("absent.pem");
    let err = ClickHouseStore::new(https_config(tls.port(), &missing, PASSWORD)).expect_err("no CA file").to_string();
    assert!(err.contains("absent.pem") && err.contains(&format!("127.0.0.1:{}", tls.port())), "{err}");
}
