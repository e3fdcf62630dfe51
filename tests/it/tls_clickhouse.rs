//! ClickHouse over HTTPS with a password: a ClickHouse server of the test's own (its users
//! file has a password user; ClickHouse 18.16 has no `CREATE USER`) behind `stunnel4` with a
//! certificate authority the test makes. The store pings, migrates, takes the generated
//! stream and answers every analytics query as the oracle does, over that connection; a
//! wrong password and an untrusted certificate fail with errors that say so.

use std::path::Path;

use lms_analytics::{AnalyticsStore, ClickHouseConfig, ClickHouseStore};
use lms_bus::Secret;
use tests::clickhouse::OwnClickHouse;
use tests::init_logs;
use tests::tls::{TestCa, TlsTerminator};

use crate::analytics_common::{Oracle, answers, assert_same, generate, oracle_answers, queries};

const USER: &str = "lms_tls";
const PASSWORD: &str = "tls-test-password";

/// The users file of the test's ClickHouse: only the password user `USER`.
fn users_xml() -> String {
    format!(
        "<yandex>\n<profiles><default></default></profiles>\n<users>\n\
         <{USER}><password>{PASSWORD}</password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></{USER}>\n\
         </users>\n<quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>\
         <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>\n</yandex>\n"
    )
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
    let ch = OwnClickHouse::start_with_users(Some(&users_xml())).await;
    let ca = TestCa::new("clickhouse");
    let tls = TlsTerminator::start(&ca, None, &format!("127.0.0.1:{}", ch.http_port())).await;

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
