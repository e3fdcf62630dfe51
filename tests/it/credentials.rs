//! Achievements as Open Badges 3.0 credentials, verified by an independent implementation:
//! keys made by `openssl` (Ed25519 for one tenant, P-256 for another), achievements in the
//! PostgreSQL state store as the achievements processor writes them, the credential fetched
//! over HTTP, then checked by `tests/python/verify_ob3.py` with joserfc (PyPI) against the
//! issuer's published key set and status list; revoked through the API, it shows as revoked.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use api::credentials::{Credentials, CredentialsConfig, IssuerConfig};
use lms_state::Store;
use serde_json::Value;
use tests::{kafka_brokers, repo_root, unique_prefix};

use crate::api_support::{TENANT, TestApi, answer, config, token_with};
use crate::support::fresh_postgres_db;

fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let out = Command::new("openssl").arg("genpkey").args(args).arg("-out").arg(&path).output().expect("run openssl");
    assert!(out.status.success(), "openssl genpkey {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    path
}

/// Runs the independent verifier; returns what it printed, or panics with its error.
fn verify(dir: &Path, jwks: &Value, credential_jwt: &str, status_jwt: &str, expected: &str) -> String {
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).expect("jwks");
    std::fs::write(dir.join("credential.jwt"), credential_jwt).expect("credential");
    std::fs::write(dir.join("status.jwt"), status_jwt).expect("status list");
    let out = Command::new("python3")
        .arg(repo_root().join("tests/python/verify_ob3.py"))
        .args([dir.join("jwks.json"), dir.join("credential.jwt"), dir.join("status.jwt")])
        .arg(expected)
        .output()
        .expect("python3 (cargo xtask install installs joserfc)");
    assert!(
        out.status.success(),
        "verify_ob3.py ({expected}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn unlock(store: &Store, tenant: &str, learner: &str, achievement: &str, course: &str, title: &str) {
    sqlx::query(
        "INSERT INTO achievements (tenant, learner_id, achievement_id, course_id, title, unlocked_at_us) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(learner)
    .bind(achievement)
    .bind(course)
    .bind(title)
    .bind(1_767_225_600_000_000_i64)
    .execute(store.pool())
    .await
    .expect("an achievement row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_verify_independently_and_revocation_shows() {
    let dir = std::env::temp_dir().join(unique_prefix("ob3"));
    std::fs::create_dir_all(&dir).expect("dir");
    let ed = openssl_key(&dir, "acme.pem", &["-algorithm", "ed25519"]);
    let ec = openssl_key(&dir, "globex.pem", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let store = processors::open_store(&fresh_postgres_db("ob3").await, 4).await.expect("store");
    unlock(&store, TENANT, "ada", "first-lesson", "", "First steps").await;
    unlock(&store, TENANT, "ada", "course-completed", "c1", "Course completed").await;
    unlock(&store, TENANT, "ada", "course-completed", "c2", "Course completed").await;
    unlock(&store, "globex", "gus", "streak-7", "", "Seven-day learning streak").await;

    let mut credentials = CredentialsConfig { base_url: Some("https://lms.example.org".into()), ..CredentialsConfig::default() };
    credentials.issuers.insert(TENANT.into(), IssuerConfig { name: "Acme Academy".into(), key_file: ed });
    credentials.issuers.insert("globex".into(), IssuerConfig { name: "Globex University".into(), key_file: ec });
    let creds = Arc::new(Credentials::load(&credentials).expect("issuers"));
    let router_store = store.clone();
    let api = TestApi::start_with("ob3", &kafka_brokers(), config(), move |a| a.merge(api::credentials::router(router_store, creds))).await;
    let get = |path: &str, token: &str| api.http.get(format!("{}{path}", api.url)).bearer_auth(token.to_owned());
    let public = |path: &str| api.http.get(format!("{}{path}", api.url));

    let ada = token_with(TENANT, "ada", "learner:read", 3600);
    let (status, _, first) = answer(get("/v1/learners/ada/achievements/first-lesson/credential", &ada).send().await.expect("get")).await;
    assert_eq!(status, 200, "{first}");
    let credential = &first["credential"];
    assert_eq!(credential["issuer"]["id"], "https://lms.example.org/v1/issuers/acme");
    assert_eq!(credential["credentialSubject"]["achievement"]["criteria"]["narrative"], "Complete a first lesson in any course.");
    assert_eq!(credential["validFrom"], "2026-01-01T00:00:00Z", "the unlock time");
    let (_, _, again) = answer(get("/v1/learners/ada/achievements/first-lesson/credential", &ada).send().await.expect("get")).await;
    assert_eq!(again["credential"], first["credential"], "the same achievement, the same credential and status index");

    // The compact form, the learner's other achievements, and who may not read them.
    let compact = get("/v1/learners/ada/achievements/first-lesson/credential", &ada)
        .header("accept", "application/vc+jwt")
        .send()
        .await
        .expect("get");
    assert_eq!(compact.headers()["content-type"], "application/vc+jwt");
    assert_eq!(compact.text().await.expect("jwt").split('.').count(), 3);
    let (status, _, body) = answer(get("/v1/learners/ada/achievements/course-completed/credential", &ada).send().await.expect("get")).await;
    assert!(status == 400 && body["detail"].as_str().is_some_and(|d| d.contains("c1, c2")), "{status} {body}");
    let (status, _, c1) =
        answer(get("/v1/learners/ada/achievements/course-completed/credential?course_id=c1", &ada).send().await.expect("get")).await;
    assert_eq!(status, 200, "{c1}");
    let (status, _, _) = answer(get("/v1/learners/ada/achievements/streak-7/credential", &ada).send().await.expect("get")).await;
    assert_eq!(status, 404, "not unlocked");
    let bob = token_with(TENANT, "bob", "learner:read", 3600);
    let (status, _, _) = answer(get("/v1/learners/ada/achievements/first-lesson/credential", &bob).send().await.expect("get")).await;
    assert_eq!(status, 403, "another learner");
    let (status, _, _) = answer(public("/v1/learners/ada/achievements/first-lesson/credential").send().await.expect("get")).await;
    assert_eq!(status, 401);

    // The issuer's public documents, and the independent verification.
    let (status, _, profile) = answer(public("/v1/issuers/acme").send().await.expect("profile")).await;
    assert!(status == 200 && profile["name"] == "Acme Academy" && profile["type"][0] == "Profile", "{profile}");
    let (_, _, jwks) = answer(public("/v1/issuers/acme/jwks").send().await.expect("jwks")).await;
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    let status_jwt = |tenant: &'static str| {
        let r = public(&format!("/v1/issuers/{tenant}/status/revocation")).header("accept", "application/vc+jwt");
        async move { r.send().await.expect("status list").text().await.expect("jwt") }
    };
    let jwt = first["jwt"].as_str().expect("jwt");
    let printed = verify(&dir, &jwks, jwt, &status_jwt(TENANT).await, "valid");
    assert!(printed.contains(credential["id"].as_str().expect("id")), "{printed}");
    verify(&dir, &jwks, c1["jwt"].as_str().expect("jwt"), &status_jwt(TENANT).await, "valid");

    // Revoked by an admin: the status list says so; the other credential stays valid.
    let revoke =
        |token: String| api.http.delete(format!("{}/v1/learners/ada/achievements/first-lesson/credential", api.url)).bearer_auth(token);
    let (status, _, _) = answer(revoke(ada.clone()).send().await.expect("revoke")).await;
    assert_eq!(status, 403, "a learner cannot revoke");
    let admin = token_with(TENANT, "registrar", "admin", 3600);
    let (status, _, body) = answer(revoke(admin.clone()).send().await.expect("revoke")).await;
    assert_eq!(status, 204, "{body}");
    verify(&dir, &jwks, jwt, &status_jwt(TENANT).await, "revoked");
    verify(&dir, &jwks, c1["jwt"].as_str().expect("jwt"), &status_jwt(TENANT).await, "valid");

    // The other tenant signs with its P-256 key (ES256), verified against its own key set.
    let gus = token_with("globex", "gus", "learner:read", 3600);
    let (status, _, g) = answer(get("/v1/learners/gus/achievements/streak-7/credential", &gus).send().await.expect("get")).await;
    assert_eq!(status, 200, "{g}");
    let (_, _, globex_jwks) = answer(public("/v1/issuers/globex/jwks").send().await.expect("jwks")).await;
    assert_eq!(globex_jwks["keys"][0]["alg"], "ES256");
    verify(&dir, &globex_jwks, g["jwt"].as_str().expect("jwt"), &status_jwt("globex").await, "valid");
    let wrong = std::panic::catch_unwind(|| verify(&dir, &jwks, g["jwt"].as_str().unwrap_or_default(), "x", "valid"));
    assert!(wrong.is_err(), "a globex credential does not verify with acme's keys");
    std::fs::remove_dir_all(&dir).ok();
}
