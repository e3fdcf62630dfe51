//! SASL/SCRAM against a real broker: tansu 0.6.0 with `--authentication`, users created with
//! its own tool. The deployed binary (`lms topics apply`, `lms api`, `lms processor run`,
//! `lms groups`) authenticates through `kafka.security` alone, with SCRAM-SHA-256 and
//! SCRAM-SHA-512; a wrong password or no SASL at all is refused, with an error naming the
//! broker. (PLAIN is not offered by tansu 0.6.0: it is proven only as far as librdkafka's
//! configuration, see the README.)

use tests::{OwnBroker, free_port, init_logs, lms_env, run_lms, spawn_lms, unique_prefix};

use crate::api_support::SECRET;
use crate::support::fresh_postgres_db;

/// The environment of `lms` with SASL over plaintext.
fn with_sasl(mut env: Vec<(&'static str, String)>, mechanism: &str, user: &str, password: &str) -> Vec<(&'static str, String)> {
    env.push(("LMS_KAFKA__SECURITY__PROTOCOL", "sasl_plaintext".to_owned()));
    env.push(("LMS_KAFKA__SECURITY__SASL__MECHANISM", mechanism.to_owned()));
    env.push(("LMS_KAFKA__SECURITY__SASL__USERNAME", user.to_owned()));
    env.push(("LMS_KAFKA__SECURITY__SASL__PASSWORD", password.to_owned()));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_authenticates_every_client_and_refuses_wrong_credentials() {
    init_logs();
    let mut broker = OwnBroker::start(true).await;
    broker.create_user("ada-service", "s3cret-256", "scram256");
    broker.create_user("bob-service", "s3cret-512", "scram512");
    broker.require_authentication().await;
    let prefix = unique_prefix("sasl-kafka");
    let store = fresh_postgres_db("sasl_kafka").await;
    let port = free_port();
    let plain = lms_env(&broker.brokers(), &prefix, &store, port, SECRET);

    // Refused: no SASL, a wrong password, a user of the other mechanism.
    for (what, env) in [
        ("without SASL", plain.clone()),
        ("with a wrong password", with_sasl(plain.clone(), "SCRAM-SHA-256", "ada-service", "wrong")),
        ("with SCRAM-SHA-256 for a SCRAM-SHA-512 user", with_sasl(plain.clone(), "SCRAM-SHA-256", "bob-service", "s3cret-512")),
    ] {
        let out = run_lms(&["topics", "plan"], &env);
        assert!(!out.ok, "lms topics plan {what} must fail: {}", out.stdout);
        assert!(out.stderr.contains(&broker.brokers()), "the error names the broker ({what}): {}", out.stderr);
    }

    // SCRAM-SHA-512: the admin tool.
    let bob = with_sasl(plain.clone(), "SCRAM-SHA-512", "bob-service", "s3cret-512");
    let applied = run_lms(&["topics", "apply"], &bob);
    assert!(applied.ok, "lms topics apply with SCRAM-SHA-512: {}{}", applied.stdout, applied.stderr);

    // SCRAM-SHA-256: the API's producer and the processors, end to end.
    let ada = with_sasl(plain, "SCRAM-SHA-256", "ada-service", "s3cret-256");
    let _processors = spawn_lms(&["processor", "run", "catalog", "progress"], &ada, &format!("{prefix}processors.log"));
    let _api = spawn_lms(&["api"], &ada, &format!("{prefix}api.log"));
    crate::tls_kafka::a_lesson_reaches_progress(port, "sasl", "with SASL").await;
    let groups = run_lms(&["groups"], &ada);
    assert!(groups.ok && groups.stdout.contains("progress"), "lms groups with SASL: {}{}", groups.stdout, groups.stderr);
}
