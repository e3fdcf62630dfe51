//! Tokens of identity providers and browser clients, against the API on the real broker:
//!
//! - a JWK Set served on loopback by the test, with an RSA and an EC P-256 key the test
//!   makes with the `openssl` command: RS256 and ES256 tokens are accepted, a key published
//!   later (rotation) is picked up without a restart, and a wrong `iss`, a wrong `aud`, an
//!   unknown `kid`, an expired token, `alg: none` and an HS256 token signed with the RSA
//!   public key as the secret are all 401 problems; a failing JWKS endpoint keeps the cached
//!   keys in use and shows in `/readyz`, naming its URL;
//! - CORS: a preflight from a configured origin gets the allow headers (no 405), one from
//!   another origin none.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{JwtIssuerConfig, ScopeClaim};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lms_events::{EventType, examples};
use serde_json::{Value, json};
use tests::{eventually, kafka_brokers};
use tokio_util::sync::CancellationToken;

use crate::api_support::{TENANT, TestApi, answer, config};

pub(crate) const ISSUER: &str = "https://idp.test.example/";
/// A second issuer on the same keys, giving the tenant as `org` and the scopes as `scp`.
const ISSUER_SCP: &str = "https://scp.test.example/";
pub(crate) const AUDIENCE: &str = "lms-api";
const PROBLEM: &str = "application/problem+json";

/// A key pair made with `openssl`: the private key to sign with, the public key as a JWK,
/// and the public key as PEM (for the algorithm-confusion attack).
pub(crate) struct TestKey {
    pub(crate) encoding: EncodingKey,
    pub(crate) jwk: Value,
    pub(crate) public_pem: String,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().expect("the openssl command");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

pub(crate) fn rsa_key(dir: &Path, kid: &str) -> TestKey {
    let pem = dir.join(format!("{kid}.pem"));
    let pem = pem.to_str().expect("path");
    openssl(&["genrsa", "-out", pem, "2048"]);
    let der = openssl(&["rsa", "-in", pem, "-traditional", "-outform", "DER"]);
    let modulus = String::from_utf8(openssl(&["rsa", "-in", pem, "-noout", "-modulus"])).expect("utf-8");
    let n = hex(modulus.trim().trim_start_matches("Modulus="));
    let public_pem = String::from_utf8(openssl(&["rsa", "-in", pem, "-pubout"])).expect("utf-8");
    TestKey {
        encoding: EncodingKey::from_rsa_der(&der),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode(n)}),
        public_pem,
    }
}

fn ec_key(dir: &Path, kid: &str) -> TestKey {
    let pem = dir.join(format!("{kid}.pem"));
    let pem = pem.to_str().expect("path");
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", pem]);
    let pkcs8 = openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", pem, "-outform", "DER"]);
    let spki = openssl(&["pkey", "-in", pem, "-pubout", "-outform", "DER"]);
    // The SubjectPublicKeyInfo ends with the uncompressed point 04 || x || y.
    let point = &spki[spki.len() - 65..];
    assert_eq!(point[0], 4, "an uncompressed point");
    let public_pem = String::from_utf8(openssl(&["pkey", "-in", pem, "-pubout"])).expect("utf-8");
    TestKey {
        encoding: EncodingKey::from_ec_der(&pkcs8),
        jwk: json!({"kty": "EC", "kid": kid, "use": "sig", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])}),
        public_pem,
    }
}

/// The JWK Set endpoint: serves `keys`, or 503 while `failing`.
#[derive(Clone, Default)]
pub(crate) struct Jwks {
    pub(crate) keys: Arc<Mutex<Vec<Value>>>,
    failing: Arc<Mutex<bool>>,
}

impl Jwks {
    pub(crate) async fn serve(&self, shutdown: CancellationToken) -> String {
        let jwks = self.clone();
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move {
                    if *jwks.failing.lock().expect("lock") {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    axum::Json(json!({"keys": *jwks.keys.lock().expect("lock")})).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await });
        url
    }
}

fn claims(iss: &str, aud: &str, expires_in_s: i64) -> Value {
    json!({"iss": iss, "aud": aud, "sub": "svc-idp", "tenant": TENANT, "scope": "events:write",
           "exp": chrono::Utc::now().timestamp() + expires_in_s})
}

pub(crate) fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// A token by hand: any header, the claims, any signature bytes.
pub(crate) fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn lesson() -> Value {
    let mut e = examples::client_json(EventType::LessonCompleted);
    e["id"] = json!(uuid::Uuid::new_v4().to_string());
    e
}

/// The status of `POST /v1/events` with `token`; a 401 must be a problem.
async fn post_status(api: &TestApi, token: &str) -> u16 {
    let (status, content_type, body) = answer(api.post("/v1/events", Some(token), &lesson()).send().await.expect("post")).await;
    if status == 401 {
        assert_eq!(content_type, PROBLEM, "{body}");
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_jwks_issuer_tokens_accepted_rotated_and_hostile_ones_refused() {
    let dir = std::env::temp_dir().join(format!("lms-jwks-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (rsa, ec, rotated) = (rsa_key(&dir, "rsa-1"), ec_key(&dir, "ec-1"), rsa_key(&dir, "rsa-2"));
    let jwks = Jwks::default();
    *jwks.keys.lock().expect("lock") = vec![rsa.jwk.clone(), ec.jwk.clone()];
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let jwks_url = jwks.serve(stop).await;

    let issuer = |iss: &str, tenant_claim: &str, scope_claim| JwtIssuerConfig {
        issuer: iss.to_owned(),
        audience: AUDIENCE.to_owned(),
        jwks_url: jwks_url.clone(),
        tenant_claim: tenant_claim.to_owned(),
        scope_claim,
        refresh_min_interval_s: 1,
    };
    let cfg = api::ApiConfig {
        jwt_issuers: vec![issuer(ISSUER, "tenant", ScopeClaim::Scope), issuer(ISSUER_SCP, "org", ScopeClaim::Scp)],
        ..config()
    };
    let api = TestApi::start("api-jwks", &kafka_brokers(), cfg).await;

    // RS256 and ES256 of the first issuer; ES256 of the second with `org` and `scp`.
    assert_eq!(post_status(&api, &sign(Algorithm::RS256, "rsa-1", &rsa.encoding, &claims(ISSUER, AUDIENCE, 300))).await, 202);
    assert_eq!(post_status(&api, &sign(Algorithm::ES256, "ec-1", &ec.encoding, &claims(ISSUER, AUDIENCE, 300))).await, 202);
    let scp = json!({"iss": ISSUER_SCP, "aud": AUDIENCE, "sub": "svc", "org": TENANT, "scp": ["events:write"],
                     "exp": chrono::Utc::now().timestamp() + 300});
    assert_eq!(post_status(&api, &sign(Algorithm::ES256, "ec-1", &ec.encoding, &scp)).await, 202);
    // The second issuer's tokens without `events:write` in `scp` are 403, not 401.
    let read_only = json!({"iss": ISSUER_SCP, "aud": AUDIENCE, "sub": "svc", "org": TENANT, "scp": ["analytics:read"],
                           "exp": chrono::Utc::now().timestamp() + 300});
    assert_eq!(post_status(&api, &sign(Algorithm::ES256, "ec-1", &ec.encoding, &read_only)).await, 403);

    // Hostile tokens, each 401.
    let good = claims(ISSUER, AUDIENCE, 300);
    let hostile = [
        ("wrong iss", sign(Algorithm::RS256, "rsa-1", &rsa.encoding, &claims("https://evil.example/", AUDIENCE, 300))),
        ("wrong aud", sign(Algorithm::RS256, "rsa-1", &rsa.encoding, &claims(ISSUER, "another-api", 300))),
        ("unknown kid", sign(Algorithm::RS256, "rsa-9", &rsa.encoding, &good)),
        ("expired", sign(Algorithm::RS256, "rsa-1", &rsa.encoding, &claims(ISSUER, AUDIENCE, -600))),
        ("alg none", raw_token(&json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}), &good, b"")),
        ("alg none, no kid", raw_token(&json!({"alg": "none", "typ": "JWT"}), &good, b"")),
        (
            "HS256 with the RSA public key as the secret",
            sign(Algorithm::HS256, "rsa-1", &EncodingKey::from_secret(rsa.public_pem.as_bytes()), &good),
        ),
        (
            "HS256 with the EC public key as the secret",
            sign(Algorithm::HS256, "ec-1", &EncodingKey::from_secret(ec.public_pem.as_bytes()), &good),
        ),
        (
            "HS256 with the RSA public key, no iss",
            sign(
                Algorithm::HS256,
                "rsa-1",
                &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
                &json!({"sub": "x", "tenant": TENANT, "scope": "admin", "exp": chrono::Utc::now().timestamp() + 300}),
            ),
        ),
        ("ES256 header on the RSA key", sign(Algorithm::ES256, "rsa-1", &ec.encoding, &good)),
        ("RS256 signed by another RSA key", sign(Algorithm::RS256, "rsa-1", &rotated.encoding, &good)),
    ];
    for (what, token) in &hostile {
        assert_eq!(post_status(&api, token).await, 401, "{what}");
    }

    // Rotation: a key published later is used without a restart (a token naming it refetches
    // the set, at most once a second here).
    let new_key_token = sign(Algorithm::RS256, "rsa-2", &rotated.encoding, &good);
    assert_eq!(post_status(&api, &new_key_token).await, 401, "not published yet");
    jwks.keys.lock().expect("lock").push(rotated.jwk.clone());
    eventually("a token of the rotated key is accepted", Duration::from_secs(30), || async {
        (post_status(&api, &new_key_token).await == 202).then_some(())
    })
    .await;

    // A failing endpoint: /readyz names it, and the cached keys stay in use.
    *jwks.failing.lock().expect("lock") = true;
    let reason = eventually("/readyz reports the failing JWKS endpoint", Duration::from_secs(30), || async {
        let (status, _, body) = answer(api.http.get(format!("{}/readyz", api.url)).send().await.ok()?).await;
        (status == 503 && body.to_string().contains(&jwks_url)).then_some(body)
    })
    .await;
    assert!(reason.to_string().contains("jwks:"), "{reason}");
    assert_eq!(post_status(&api, &sign(Algorithm::RS256, "rsa-1", &rsa.encoding, &good)).await, 202, "cached keys kept");
    assert_eq!(post_status(&api, &new_key_token).await, 202, "cached keys kept");
    *jwks.failing.lock().expect("lock") = false;
    api.wait_ready().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cors_preflight_for_configured_origins_only() {
    const ALLOWED: &str = "http://127.0.0.1:9";
    let cfg = api::ApiConfig { cors_allowed_origins: vec![ALLOWED.to_owned()], ..config() };
    let api = TestApi::start("api-cors", &kafka_brokers(), cfg).await;
    let preflight = |origin: &str, path: &str| {
        api.http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", api.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
    };
    for path in ["/v1/events", "/v1/xapi/statements", "/v1/learners/l-1/progress"] {
        let r = preflight(ALLOWED, path).send().await.expect("preflight");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let h = r.headers();
        assert_eq!(h.get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some(ALLOWED), "{path}: {h:?}");
        let methods = h.get("access-control-allow-methods").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert!(methods.contains("POST") && methods.contains("GET"), "{path}: {methods}");
        let headers = h.get("access-control-allow-headers").and_then(|v| v.to_str().ok()).unwrap_or_default().to_lowercase();
        assert!(headers.contains("authorization") && headers.contains("content-type"), "{path}: {headers}");

        let r = preflight("http://evil.example", path).send().await.expect("preflight");
        assert!(r.headers().get("access-control-allow-origin").is_none(), "{path}: {:?}", r.headers());
    }
    // The actual request carries the origin back, problems included.
    let r = api.post("/v1/events", None, &lesson()).header("origin", ALLOWED).send().await.expect("post");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some(ALLOWED));

    // Without configured origins: no CORS headers, and the preflight is not answered as CORS.
    let plain = api.another(config(), |a| a).await;
    let r = plain
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/events", plain.url))
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(r.headers().get("access-control-allow-origin").is_none(), "{:?}", r.headers());
}
