//! Bad input against the deployed shape (`lms api` and `lms processor run` as processes on
//! the real broker, PostgreSQL and the analytics twin):
//!
//! - every read endpoint of the committed OpenAPI document (its `GET` paths under
//!   `/v1/learners` and `/v1/analytics`, so a new route is covered without touching this
//!   file) × every way a caller may try to read what it must not: a token of another
//!   tenant, another learner's token, a wrong scope, an expired, forged, tampered or
//!   `alg: none` token, no token, a malformed `Authorization` header;
//! - the same callers with RS256 tokens of a configured identity provider (a key set served
//!   on loopback), plus the issuer-specific ones: another audience, an issuer not
//!   configured, an unknown `kid`, `alg: none` and HS256 signed with the public key;
//! - request bodies over the limits (413) on every write endpoint of the document;
//! - slow-loris style bodies, dribbled a byte at a time over a raw TCP connection, answered
//!   408 once `body_timeout_ms` has passed.

use std::time::{Duration, Instant};

use api::auth::{Claims, sign_hs256};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tests::{BusFixture, eventually, free_port, init_logs, kafka_brokers, lms_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api_jwks::{AUDIENCE, ISSUER, Jwks, TestKey, raw_token, rsa_key, sign};
use crate::api_support::{SECRET, TENANT, WEBHOOK_SECRET, answer, token, token_with};
use crate::pipeline_e2e::{Proc, event, lms};
use crate::support::fresh_postgres_db;

/// Another tenant, which is sent nothing.
const OTHER_TENANT: &str = "globex";
/// The write endpoints' body limit (`max_body_bytes`) the services run with here.
const MAX_BODY_BYTES: usize = 100_000;
/// The single-event body limit (`max_event_bytes`: enrollments, webhooks).
const MAX_EVENT_BYTES: usize = 10_000;
/// How long a body may take (`body_timeout_ms`).
const BODY_TIMEOUT_MS: u64 = 1_500;

/// `lms api` and the processors on a fresh topic prefix, state store and analytics twin.
pub(crate) struct Pipeline {
    pub base: String,
    pub port: u16,
    pub http: reqwest::Client,
    _processes: Vec<Proc>,
}

impl Pipeline {
    /// Starts the processors (unless `processors` is empty) and the API with `extra` settings
    /// (`LMS_…` variables), and waits until the API is ready.
    pub(crate) async fn start(test: &str, processors: &[&str], extra: &[(&str, String)]) -> Pipeline {
        init_logs();
        let brokers = kafka_brokers();
        let BusFixture { prefix, .. } = BusFixture::fresh(&brokers, test, 2).await;
        let store = fresh_postgres_db(test).await;
        let port = free_port();
        let mut env = lms_env(&brokers, &prefix, &store, port, SECRET);
        env.extend(extra.iter().cloned());
        let mut processes = Vec::new();
        if !processors.is_empty() {
            let mut args = vec!["processor", "run"];
            args.extend_from_slice(processors);
            processes.push(lms(&args, &env, &format!("{prefix}processors.log")));
        }
        processes.push(lms(&["api"], &env, &format!("{prefix}api.log")));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("the API is ready (broker, state store, analytics store)", Duration::from_secs(60), || async {
            let r = http.get(format!("{base}/readyz")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        Pipeline { base, port, http, _processes: processes }
    }

    /// Sends the events of [`seed_events`] for tenant `acme` and waits until every read
    /// endpoint shows them.
    pub(crate) async fn seed(&self) {
        let (status, _, body) = answer(
            self.http
                .post(format!("{}/v1/events", self.base))
                .bearer_auth(token("events:write"))
                .json(&seed_events())
                .send()
                .await
                .expect("post"),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        assert!(body["rejected"].as_array().is_some_and(Vec::is_empty), "{body}");
        let analyst = token("analytics:read");
        for path in [
            "/v1/learners/ada/progress",
            "/v1/learners/ada/achievements",
            "/v1/analytics/courses/rust/funnel",
            "/v1/analytics/revenue?from=2026-11-01&to=2026-11-30",
        ] {
            eventually(&format!("{path} shows the seeded events"), Duration::from_secs(90), || async {
                let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(&analyst).send().await.ok()?;
                let (status, _, body) = answer(r).await;
                (status == 200 && has_data(&body)).then_some(())
            })
            .await;
        }
        // Ada's completion reaches the funnel last (through `course.completed`).
        eventually("the funnel counts ada's completion", Duration::from_secs(60), || async {
            let r = self.http.get(format!("{}/v1/analytics/courses/rust/funnel", self.base)).bearer_auth(&analyst).send().await.ok()?;
            let (status, _, body) = answer(r).await;
            (status == 200 && body["completed"] == 1).then_some(())
        })
        .await;
    }
}

/// Two learners of tenant `acme` in course `rust`: ada completes it, bob is half way; a
/// payment and an assessment.
pub(crate) fn seed_events() -> Value {
    let modules = json!([{"module_id": "m1", "lessons": ["l1", "l2"]}]);
    json!([
        event(
            "c1",
            "course.published",
            "2026-11-02T08:00:00Z",
            None,
            json!({"course_id": "rust", "title": "Rust", "version": 1, "modules": modules})
        ),
        event(
            "e1",
            "enrollment.created",
            "2026-11-02T09:00:00Z",
            Some("ada"),
            json!({"learner_id": "ada", "course_id": "rust", "source": "self"})
        ),
        event(
            "e2",
            "enrollment.created",
            "2026-11-02T09:30:00Z",
            Some("bob"),
            json!({"learner_id": "bob", "course_id": "rust", "source": "self"})
        ),
        event(
            "l1",
            "lesson.completed",
            "2026-11-03T10:00:00Z",
            Some("ada"),
            json!({"learner_id": "ada", "course_id": "rust", "lesson_id": "l1"})
        ),
        event(
            "l2",
            "lesson.completed",
            "2026-11-04T10:00:00Z",
            Some("ada"),
            json!({"learner_id": "ada", "course_id": "rust", "lesson_id": "l2"})
        ),
        event(
            "l3",
            "lesson.completed",
            "2026-11-04T11:00:00Z",
            Some("bob"),
            json!({"learner_id": "bob", "course_id": "rust", "lesson_id": "l1"})
        ),
        event(
            "a1",
            "assessment.graded",
            "2026-11-04T12:00:00Z",
            Some("ada"),
            json!({"learner_id": "ada", "course_id": "rust", "assessment_id": "quiz", "score": 8, "max_score": 10, "attempt": 1})
        ),
        event(
            "p1",
            "payment.succeeded",
            "2026-11-02T08:30:00Z",
            Some("ada"),
            json!({"payment_id": "pay1", "learner_id": "ada", "course_id": "rust", "amount_minor": 4900, "currency": "EUR"})
        ),
    ])
}

/// The strings of the seeded data that identify it (learners, course, assessment, payment).
const SEEDED_IDS: &[&str] = &["ada", "bob", "rust", "quiz", "pay1", "l1", "l2"];

/// True when `v` holds any of the seeded data: a non-zero number (other than a histogram
/// bucket's bounds) or one of [`SEEDED_IDS`].
fn has_data(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => SEEDED_IDS.contains(&s.as_str()),
        Value::Array(items) => items.iter().any(has_data),
        Value::Object(members) => members.iter().any(|(k, v)| k != "from_pct" && k != "to_pct" && has_data(v)),
        Value::Bool(_) | Value::Null => false,
    }
}

/// A read endpoint of the document with its parameters filled for the seeded data.
struct Read {
    /// The route as the document names it, such as `/v1/learners/{learner_id}/progress`.
    route: String,
    /// The path and query to request.
    path: String,
}

impl Read {
    fn is_learner(&self) -> bool {
        self.route.starts_with("/v1/learners/")
    }
}

/// Every `GET` under `/v1/learners` and `/v1/analytics` of the committed document, with its
/// path parameters and the query parameters the seeded data needs. A new required parameter
/// without a value here fails the test, naming it.
fn read_endpoints() -> Vec<Read> {
    let doc: Value = serde_json::from_str(include_str!("../../api/openapi.json")).expect("api/openapi.json is JSON");
    let paths = doc["paths"].as_object().expect("paths");
    let value_of = |name: &str| -> Option<&'static str> {
        Some(match name {
            "learner_id" => "ada",
            "course_id" => "rust",
            "assessment_id" => "quiz",
            "achievement_id" => "first-lesson",
            "from" => "2026-11-01",
            "to" => "2026-11-30",
            "currency" => "EUR",
            "inactive_days" => "1",
            "as_of" => "2026-11-20T00:00:00Z",
            _ => return None,
        })
    };
    let mut reads = Vec::new();
    for (route, item) in paths {
        let Some(get) = item.get("get") else { continue };
        if !(route.starts_with("/v1/learners/") || route.starts_with("/v1/analytics/")) {
            continue;
        }
        let mut path = route.clone();
        let mut query = Vec::new();
        let params = item.get("parameters").and_then(Value::as_array).into_iter().chain(get.get("parameters").and_then(Value::as_array));
        for p in params.flatten() {
            let name = p["name"].as_str().expect("a parameter name");
            let required = p["required"].as_bool().unwrap_or(false);
            match p["in"].as_str() {
                Some("path") => {
                    let v = value_of(name).unwrap_or_else(|| panic!("{route}: give the new path parameter `{name}` a value here"));
                    path = path.replace(&format!("{{{name}}}"), v);
                }
                Some("query") if name != "course_id" => match value_of(name) {
                    Some(v) => query.push(format!("{name}={v}")),
                    None => assert!(!required, "{route}: give the new required query parameter `{name}` a value here"),
                },
                _ => {}
            }
        }
        assert!(!path.contains('{'), "{route}: a path parameter is not declared");
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        reads.push(Read { route: route.clone(), path });
    }
    reads
}

/// The routes the seeded events must show up in for tenant `acme`'s analyst: the matrix
/// below compares each to what other callers get, so each must hold data.
const SEEDED_ROUTES: &[&str] = &[
    "/v1/learners/{learner_id}/progress",
    "/v1/learners/{learner_id}/achievements",
    "/v1/analytics/active-learners",
    "/v1/analytics/enrollments",
    "/v1/analytics/completions",
    "/v1/analytics/revenue",
    "/v1/analytics/courses/{course_id}/funnel",
    "/v1/analytics/courses/{course_id}/at-risk",
    "/v1/analytics/assessments/{assessment_id}/scores",
];

/// Unpadded base64url.
fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn claims(tenant: &str, sub: &str, scope: &str, expires_in_s: i64) -> Claims {
    Claims { sub: sub.into(), tenant: tenant.into(), scope: scope.into(), exp: (chrono::Utc::now().timestamp() + expires_in_s) as u64 }
}

/// What a caller sends as `Authorization`, and what it must get.
struct Caller {
    what: &'static str,
    authorization: Option<String>,
    /// The status every learner route must answer (`None`: 200 without any seeded data).
    learner: Option<u16>,
    /// The status every analytics route must answer (`None`: 200 without any seeded data).
    analytics: Option<u16>,
}

/// The callers that must not see tenant `acme`'s learner `ada` nor its analytics.
fn hostile_callers() -> Vec<Caller> {
    let bearer = |t: String| Some(format!("Bearer {t}"));
    let admin = claims(TENANT, "svc", "admin", 3600);
    let good = sign_hs256(SECRET.as_bytes(), &admin);
    let parts: Vec<&str> = good.split('.').collect();
    let payload = b64(&serde_json::to_vec(&admin).expect("claims"));
    // The admin claims with a header that names another algorithm.
    let with_header = |header: &str, signature: &str| format!("{}.{payload}.{signature}", b64(header.as_bytes()));
    // A valid acme token whose payload is swapped for another tenant's admin claims.
    let tampered =
        format!("{}.{}.{}", parts[0], b64(&serde_json::to_vec(&claims(OTHER_TENANT, "svc", "admin", 3600)).expect("claims")), parts[2]);
    let tampered_scope = {
        let learner = sign_hs256(SECRET.as_bytes(), &claims(TENANT, "bob", "learner:read", 3600));
        let p: Vec<&str> = learner.split('.').collect();
        format!("{}.{}.{}", p[0], b64(&serde_json::to_vec(&claims(TENANT, "bob", "analytics:read", 3600)).expect("claims")), p[2])
    };
    // HS256 with the right secret, but an empty `tenant`.
    let no_tenant = sign_hs256(SECRET.as_bytes(), &claims("", "svc", "admin", 3600));
    vec![
        Caller {
            what: "an analyst of another tenant",
            authorization: bearer(token_with(OTHER_TENANT, "svc", "analytics:read", 3600)),
            learner: None,
            analytics: None,
        },
        Caller {
            what: "an admin of another tenant",
            authorization: bearer(token_with(OTHER_TENANT, "root", "admin", 3600)),
            learner: None,
            analytics: None,
        },
        Caller {
            what: "learner `ada` of another tenant",
            authorization: bearer(token_with(OTHER_TENANT, "ada", "learner:read", 3600)),
            learner: None,
            analytics: Some(403),
        },
        Caller {
            what: "another learner (bob)",
            authorization: bearer(token_with(TENANT, "bob", "learner:read", 3600)),
            learner: Some(403),
            analytics: Some(403),
        },
        Caller {
            what: "the wrong scope (events:write)",
            authorization: bearer(token("events:write")),
            learner: Some(403),
            analytics: Some(403),
        },
        Caller { what: "no scope", authorization: bearer(token("")), learner: Some(403), analytics: Some(403) },
        Caller {
            what: "an unknown scope",
            authorization: bearer(token("analytics:write learner:write root")),
            learner: Some(403),
            analytics: Some(403),
        },
        Caller {
            what: "an expired admin token",
            authorization: bearer(sign_hs256(SECRET.as_bytes(), &claims(TENANT, "svc", "admin", -3600))),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "a token signed with another secret",
            authorization: bearer(sign_hs256(b"guessed-secret", &admin)),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "another tenant's payload under acme's signature",
            authorization: bearer(tampered),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "a learner token edited to analytics:read",
            authorization: bearer(tampered_scope),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "alg: none without signature",
            authorization: bearer(with_header(r#"{"alg":"none","typ":"JWT"}"#, "")),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "alg: none with the HS256 signature",
            authorization: bearer(with_header(r#"{"alg":"none","typ":"JWT"}"#, parts[2])),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "alg: None (case)",
            authorization: bearer(with_header(r#"{"alg":"None","typ":"JWT"}"#, "")),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "alg: HS512 header on an HS256 signature",
            authorization: bearer(with_header(r#"{"alg":"HS512","typ":"JWT"}"#, parts[2])),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller { what: "an empty tenant", authorization: bearer(no_tenant), learner: Some(401), analytics: Some(401) },
        Caller {
            what: "the signature stripped",
            authorization: bearer(format!("{}.{}.", parts[0], parts[1])),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller { what: "no Authorization header", authorization: None, learner: Some(401), analytics: Some(401) },
        Caller { what: "`Bearer` without a token", authorization: Some("Bearer".to_owned()), learner: Some(401), analytics: Some(401) },
        Caller {
            what: "`Bearer` and garbage",
            authorization: Some("Bearer not.a.jwt".to_owned()),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller { what: "a token without a scheme", authorization: Some(good.clone()), learner: Some(401), analytics: Some(401) },
        Caller {
            what: "a Basic header on a read route",
            authorization: Some(format!("Basic {}", b64(format!("svc:{good}").as_bytes()))),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller { what: "two tokens", authorization: Some(format!("Bearer {good} {good}")), learner: Some(401), analytics: Some(401) },
    ]
}

/// An RS256 token of the test issuer ([`crate::api_jwks::ISSUER`]).
fn rs256(key: &TestKey, iss: &str, aud: &str, tenant: &str, sub: &str, scope: &str, expires_in_s: i64) -> String {
    let claims = json!({"iss": iss, "aud": aud, "sub": sub, "tenant": tenant, "scope": scope,
                        "exp": chrono::Utc::now().timestamp() + expires_in_s});
    sign(Algorithm::RS256, "matrix-rsa", &key.encoding, &claims)
}

/// The hostile callers with tokens of the identity provider.
fn issuer_callers(key: &TestKey) -> Vec<Caller> {
    let bearer = |t: String| Some(format!("Bearer {t}"));
    let admin = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "svc", "tenant": TENANT, "scope": "admin",
                       "exp": chrono::Utc::now().timestamp() + 3600});
    vec![
        Caller {
            what: "RS256: an admin of another tenant",
            authorization: bearer(rs256(key, ISSUER, AUDIENCE, OTHER_TENANT, "root", "admin", 3600)),
            learner: None,
            analytics: None,
        },
        Caller {
            what: "RS256: another learner (bob)",
            authorization: bearer(rs256(key, ISSUER, AUDIENCE, TENANT, "bob", "learner:read", 3600)),
            learner: Some(403),
            analytics: Some(403),
        },
        Caller {
            what: "RS256: the wrong scope",
            authorization: bearer(rs256(key, ISSUER, AUDIENCE, TENANT, "svc", "events:write", 3600)),
            learner: Some(403),
            analytics: Some(403),
        },
        Caller {
            what: "RS256: an expired admin token",
            authorization: bearer(rs256(key, ISSUER, AUDIENCE, TENANT, "svc", "admin", -3600)),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "RS256: another audience",
            authorization: bearer(rs256(key, ISSUER, "another-api", TENANT, "svc", "admin", 3600)),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "RS256: an issuer not configured",
            authorization: bearer(rs256(key, "https://evil.example/", AUDIENCE, TENANT, "svc", "admin", 3600)),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "RS256: an unknown kid",
            authorization: bearer(sign(Algorithm::RS256, "matrix-rsa-9", &key.encoding, &admin)),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "RS256: alg none with the key's kid",
            authorization: bearer(raw_token(&json!({"alg": "none", "kid": "matrix-rsa"}), &admin, b"")),
            learner: Some(401),
            analytics: Some(401),
        },
        Caller {
            what: "RS256: HS256 signed with the RSA public key",
            authorization: bearer(sign(Algorithm::HS256, "matrix-rsa", &EncodingKey::from_secret(key.public_pem.as_bytes()), &admin)),
            learner: Some(401),
            analytics: Some(401),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_caller_reads_what_its_token_does_not_allow() {
    // The identity provider: one RSA key, served on loopback, configured through the
    // environment as an operator would.
    let dir = std::env::temp_dir().join(format!("lms-matrix-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = rsa_key(&dir, "matrix-rsa");
    let jwks = Jwks::default();
    jwks.keys.lock().expect("lock").push(key.jwk.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let jwks_url = jwks.serve(stop).await;
    let issuers = format!(r#"[{{issuer="{ISSUER}", audience="{AUDIENCE}", jwks_url="{jwks_url}"}}]"#);
    // Tenant acme issues Open Badges credentials, so the credential route holds data too.
    let badge_key = dir.join("acme-issuer.pem");
    let made =
        std::process::Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&badge_key).output().expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let badge_issuers = format!(r#"{{{TENANT}={{name="Acme Academy", key_file="{}"}}}}"#, badge_key.display());
    let env = [
        ("LMS_API__JWT_ISSUERS", issuers),
        ("LMS_API__CREDENTIALS__BASE_URL", "https://lms.example.org".to_owned()),
        ("LMS_API__CREDENTIALS__ISSUERS", badge_issuers),
    ];
    let p = Pipeline::start("security_matrix", &["catalog", "progress", "achievements", "analytics"], &env).await;
    p.seed().await;
    let reads = read_endpoints();
    let documented: Vec<&str> = reads.iter().map(|r| r.route.as_str()).collect();
    for route in SEEDED_ROUTES {
        assert!(documented.contains(route), "{route} is a documented read endpoint: {documented:?}");
    }
    let get = |path: &str, authorization: Option<&str>| {
        let mut r = p.http.get(format!("{}{path}", p.base));
        if let Some(a) = authorization {
            r = r.header("authorization", a);
        }
        async move { answer(r.send().await.expect("get")).await }
    };

    // The allowed callers see the data: without that the matrix below would prove nothing.
    let analyst = format!("Bearer {}", token("analytics:read"));
    let ada = format!("Bearer {}", token_with(TENANT, "ada", "learner:read", 3600));
    let rs_analyst = format!("Bearer {}", rs256(&key, ISSUER, AUDIENCE, TENANT, "svc", "analytics:read", 3600));
    let rs_ada = format!("Bearer {}", rs256(&key, ISSUER, AUDIENCE, TENANT, "ada", "learner:read", 3600));
    for read in &reads {
        let (status, _, body) = get(&read.path, Some(&analyst)).await;
        assert_eq!(status, 200, "{}: the analyst is refused: {body}", read.path);
        if SEEDED_ROUTES.contains(&read.route.as_str()) {
            assert!(has_data(&body), "{}: the analyst sees none of the seeded data: {body}", read.path);
        }
        let (status, _, rs_body) = get(&read.path, Some(&rs_analyst)).await;
        assert_eq!((status, &rs_body), (200, &body), "{}: the issuer's analyst reads as the HS256 one does", read.path);
        if read.is_learner() {
            let (status, _, own) = get(&read.path, Some(&ada)).await;
            assert_eq!((status, &own), (200, &body), "{}: ada reads her own resource as the analyst does", read.path);
            let (status, _, own) = get(&read.path, Some(&rs_ada)).await;
            assert_eq!((status, &own), (200, &body), "{}: ada's issuer token reads her own resource", read.path);
        }
    }

    let mut callers = hostile_callers();
    callers.extend(issuer_callers(&key));
    let mut checked = 0;
    for read in &reads {
        for caller in &callers {
            let expected = if read.is_learner() { caller.learner } else { caller.analytics };
            let (status, content_type, body) = get(&read.path, caller.authorization.as_deref()).await;
            let case = format!("{} × {}", read.path, caller.what);
            match expected {
                Some(code) => {
                    assert_eq!(status, code, "{case}: {body}");
                    assert!(content_type.starts_with("application/problem+json"), "{case}: {content_type}");
                    assert_eq!(body["status"], code, "{case}: {body}");
                    assert!(body["type"].is_string() && body["title"].is_string(), "{case}: a problem document: {body}");
                    if code == 401 {
                        assert!(body.get("tenant").is_none(), "{case}: {body}");
                    }
                }
                // Another tenant's token asks its own tenant, where ada unlocked nothing.
                None if read.route.ends_with("/credential") => {
                    assert_eq!(status, 404, "{case}: {body}");
                    assert!(body.get("credential").is_none() && body.get("jwt").is_none(), "{case}: {body}");
                }
                None => {
                    assert_eq!(status, 200, "{case}: {body}");
                    assert!(!has_data(&body), "{case}: another tenant sees tenant {TENANT}'s data: {body}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, reads.len() * callers.len());
    eprintln!("security matrix: {} read endpoints × {} callers = {checked} requests refused or empty", reads.len(), callers.len());

    // Erasure (`admin` only): every hostile caller is refused, but another tenant's admin,
    // whose erasure names its own tenant's `ada` and leaves acme's untouched.
    let erase = |authorization: Option<&str>| {
        let mut r = p.http.delete(format!("{}/v1/learners/ada", p.base));
        if let Some(a) = authorization {
            r = r.header("authorization", a);
        }
        async move { answer(r.send().await.expect("delete")).await }
    };
    for caller in &callers {
        let expected = caller.learner.unwrap_or(if caller.what.contains("admin") { 200 } else { 403 });
        let (status, _, body) = erase(caller.authorization.as_deref()).await;
        assert_eq!(status, expected, "DELETE /v1/learners/ada × {}: {body}", caller.what);
    }
    let (_, _, still) = get("/v1/learners/ada/progress", Some(&analyst)).await;
    assert!(has_data(&still), "no hostile caller erased acme's ada: {still}");
    let acme_admin = format!("Bearer {}", token("admin"));
    let (status, _, report) = erase(Some(&acme_admin)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!((report["already_erased"].as_bool(), report["analytics"]["status"].as_str()), (Some(false), Some("erased")), "{report}");
    assert!(report["state"]["progress"].as_u64() > Some(0), "ada's progress rows were erased: {report}");
    for read in reads.iter().filter(|r| r.is_learner()) {
        let (status, _, body) = get(&read.path, Some(&analyst)).await;
        // Lists are empty; the credential of an achievement no longer there is not found.
        let gone = if read.route.ends_with("/credential") { status == 404 } else { status == 200 && !has_data(&body) };
        assert!(gone, "{}: nothing of ada after her erasure ({status}): {body}", read.path);
    }
    let (_, _, again) = erase(Some(&acme_admin)).await;
    assert_eq!(again["already_erased"], true, "{again}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A write endpoint of the document, with what it needs besides its body.
struct Write {
    route: String,
    method: reqwest::Method,
    /// Its body limit: `max_body_bytes` for batches, `max_event_bytes` for single events.
    limit: usize,
    headers: Vec<(&'static str, String)>,
}

/// Every write endpoint of the document that reads a body: a new one fails here until it
/// says which limit it has.
fn write_endpoints() -> Vec<Write> {
    let doc: Value = serde_json::from_str(include_str!("../../api/openapi.json")).expect("api/openapi.json is JSON");
    let writer = format!("Bearer {}", token("events:write"));
    let mut writes = Vec::new();
    for (route, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if op.get("requestBody").is_none() {
                continue;
            }
            let (limit, headers) = match route.as_str() {
                "/v1/events" => (MAX_BODY_BYTES, vec![("authorization", writer.clone())]),
                "/v1/xapi/statements" => {
                    (MAX_BODY_BYTES, vec![("authorization", writer.clone()), ("x-experience-api-version", "1.0.3".to_owned())])
                }
                "/v1/enrollments" => (MAX_EVENT_BYTES, vec![("authorization", writer.clone())]),
                "/v1/payments/webhook" => (MAX_EVENT_BYTES, vec![("lms-tenant", TENANT.to_owned())]),
                r if r.contains("notification") => continue, // Learner settings: checked by notify_api.
                other => panic!("{method} {other}: say here which body limit the new write endpoint has"),
            };
            let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("a method");
            writes.push(Write { route: route.clone(), method, limit, headers });
        }
    }
    assert!(writes.len() >= 4, "the write endpoints are documented: {:?}", writes.iter().map(|w| &w.route).collect::<Vec<_>>());
    writes
}

/// A JSON document of exactly `n` bytes (an object with one long string).
fn json_of_len(n: usize) -> Vec<u8> {
    let mut v = br#"{"padding":""#.to_vec();
    v.resize(n - 2, b'x');
    v.extend_from_slice(b"\"}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_bodies_are_refused() {
    let p = Pipeline::start(
        "body_limits",
        &[],
        &[
            ("LMS_API__MAX_BODY_BYTES", MAX_BODY_BYTES.to_string()),
            ("LMS_API__MAX_EVENT_BYTES", MAX_EVENT_BYTES.to_string()),
            ("LMS_API__BODY_TIMEOUT_MS", BODY_TIMEOUT_MS.to_string()),
            ("LMS_API__WEBHOOK_SECRETS__acme", WEBHOOK_SECRET.to_owned()),
        ],
    )
    .await;
    let writes = write_endpoints();
    for w in &writes {
        let request = |body: reqwest::Body| {
            let mut r =
                p.http.request(w.method.clone(), format!("{}{}", p.base, w.route)).header("content-type", "application/json").body(body);
            for (k, v) in &w.headers {
                r = r.header(*k, v);
            }
            r
        };
        // At the limit the body is read (and refused for what it says, not for its size).
        let (status, _, body) = answer(request(json_of_len(w.limit).into()).send().await.expect("post")).await;
        assert!(status != 413 && status < 500, "{} with {} bytes: {status} {body}", w.route, w.limit);
        // One byte over, with Content-Length.
        let (status, ct, body) = answer(request(json_of_len(w.limit + 1).into()).send().await.expect("post")).await;
        assert_eq!(status, 413, "{} with {} bytes: {body}", w.route, w.limit + 1);
        assert!(ct.starts_with("application/problem+json"), "{ct}");
        // Over the limit, chunked (no Content-Length): counted while reading.
        let mut chunked = Vec::new();
        for _ in 0..(w.limit / 4096 + 2) {
            chunked.extend_from_slice(b"1000\r\n");
            chunked.extend_from_slice(&[b' '; 4096]);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let (status, response) = raw_exchange(p.port, &raw_head(&p, w, "Transfer-Encoding: chunked\r\n"), &chunked, Duration::ZERO).await;
        assert_eq!(status, 413, "{} chunked over the limit: {response}", w.route);
        // A Content-Length far over the limit is refused before a byte of the body is sent.
        let head = raw_head(&p, w, &format!("Content-Length: {}\r\n", 1u64 << 40));
        let (status, response) = raw_exchange(p.port, &head, &[], Duration::ZERO).await;
        assert_eq!(status, 413, "{} declaring 1 TiB: {response}", w.route);
    }

    // A batch of more events than `max_batch_events` (1000), small enough in bytes.
    let writer = token("events:write");
    let many: Vec<Value> = (0..1001).map(|_| json!({})).collect();
    let (status, _, body) =
        answer(p.http.post(format!("{}/v1/events", p.base)).bearer_auth(&writer).json(&many).send().await.expect("post")).await;
    assert_eq!(status, 413, "{body}");
    // One event over `max_event_bytes` (64 KiB by default; 10 kB here) inside a batch that
    // fits: rejected at its index, the batch answered.
    let big = json!({"specversion": "1.0", "type": "course.retired", "source": "x".repeat(MAX_EVENT_BYTES), "time": "2026-11-02T08:00:00Z", "data": {"course_id": "c"}});
    let (status, _, body) =
        answer(p.http.post(format!("{}/v1/events", p.base)).bearer_auth(&writer).json(&json!([big])).send().await.expect("post")).await;
    assert!(status == 202 || status == 422, "{status} {body}");
    assert!(body.to_string().contains("limit"), "{body}");

    // Slow loris: the body is dribbled a byte every 100 ms; the answer is 408 once
    // `body_timeout_ms` has passed, well before the client would have finished.
    for w in &writes {
        let body = json_of_len(200);
        let head = raw_head(&p, w, &format!("Content-Length: {}\r\n", body.len()));
        let started = Instant::now();
        let (status, response) = raw_exchange(p.port, &head, &body, Duration::from_millis(100)).await;
        let took = started.elapsed();
        assert_eq!(status, 408, "{} slow body: {response}", w.route);
        assert!(response.contains("application/problem+json"), "{response}");
        let timeout = Duration::from_millis(BODY_TIMEOUT_MS);
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(2500),
            "{}: answered after {took:?}, the limit is {timeout:?}",
            w.route
        );
        // Chunked, dribbled chunk by chunk, likewise.
        let head = raw_head(&p, w, "Transfer-Encoding: chunked\r\n");
        let chunked: Vec<u8> = body.iter().flat_map(|b| format!("1\r\n{}\r\n", *b as char).into_bytes()).collect();
        let started = Instant::now();
        let (status, response) = raw_exchange(p.port, &head, &chunked, Duration::from_millis(25)).await;
        assert_eq!(status, 408, "{} slow chunked body: {response}", w.route);
        assert!(started.elapsed() < timeout + Duration::from_millis(2500), "{}: answered after {:?}", w.route, started.elapsed());
    }
    // The service still answers normally afterwards.
    let r = p.http.get(format!("{}/livez", p.base)).send().await.expect("livez");
    assert_eq!(r.status(), 200);
}

/// The request line and headers of a write to `w` (ending with the blank line).
fn raw_head(p: &Pipeline, w: &Write, framing: &str) -> Vec<u8> {
    let mut head =
        format!("{} {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n{framing}", w.method, w.route, p.port);
    for (k, v) in &w.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if w.route == "/v1/payments/webhook" {
        let t = chrono::Utc::now().timestamp();
        head.push_str(&format!("lms-signature: {}\r\n", api::webhook::sign(WEBHOOK_SECRET.as_bytes(), t, b"")));
    }
    head.push_str("Connection: close\r\n\r\n");
    head.into_bytes()
}

/// Sends `head`, then `body`: all at once when `every` is zero, else a byte at a time,
/// `every` apart, until the server answers. Returns the status and the whole response, read
/// until the server closes the connection (at most 10 s in all).
async fn raw_exchange(port: u16, head: &[u8], body: &[u8], every: Duration) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.write_all(head).await.expect("head");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    if every.is_zero() {
        // The server may answer and close before reading a body it refuses.
        let _ = stream.write_all(body).await;
    } else {
        for byte in body {
            assert!(Instant::now() < deadline, "no answer within 10 s while dribbling the body");
            if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                break; // The server closed its side: read what it answered.
            }
            match tokio::time::timeout(every, stream.read(&mut buf)).await {
                Err(_) => continue, // No answer yet: send the next byte.
                Ok(Ok(n)) => {
                    response.extend_from_slice(&buf[..n]);
                    break;
                }
                Ok(Err(_)) => break,
            }
        }
    }
    while let Ok(Ok(n)) = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}
