//! Achievements as Open Badges 3.0 credentials (1EdTech, 2024): a W3C Verifiable Credential
//! (data model 2.0) of type `OpenBadgeCredential`, secured as a JWT (`typ: vc+jwt`) with the
//! tenant's issuer key (Ed25519 → `EdDSA`, P-256 → `ES256`, PKCS#8 PEM files).
//!
//! - `GET /v1/learners/{learner_id}/achievements/{achievement_id}/credential` (`learner:read`
//!   for oneself, or `analytics:read`; `?course_id=` picks one course of a per-course
//!   achievement): `{"credential": {...}, "jwt": "..."}`, or the compact JWT alone with
//!   `Accept: application/vc+jwt`. The same achievement always gives the same credential id
//!   and status index.
//! - `DELETE` of the same path (`admin`): revokes it; the revocation status list shows it.
//! - Public, for verifiers: `GET /v1/issuers/{tenant}` (the issuer `Profile`),
//!   `GET /v1/issuers/{tenant}/jwks` (its public keys), `GET /v1/issuers/{tenant}/status/revocation`
//!   (a `BitstringStatusListCredential`, signed the same way).
//!
//! Each signed document's JWT payload is the credential itself (VC-JOSE-COSE) with the
//! registered claims `iss`, `jti`, `sub` and `nbf`/`iat` beside it, as the OB 3.0 JWT proof
//! format names them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use lms_state::Store;
use processors::achievements::rules::{Achievement, Rules};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Claims;
use crate::learners::{LearnerPath, check_learner, store_problem};
use crate::problem::{AccessProblems, PathParams, Problem, ProblemDocument};

/// The `credentials` section of the API configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CredentialsConfig {
    /// The public base URL of the API (`https://lms.example.org`): the issuer profile, its keys
    /// and the status lists are published under it, and credentials name those URLs.
    pub base_url: Option<String>,
    /// The achievement rules (titles, descriptions, criteria); the shipped
    /// `config/achievements.yaml` when absent. Use the achievements processor's file.
    pub rules_file: Option<PathBuf>,
    /// The issuer of each tenant that issues credentials.
    pub issuers: BTreeMap<String, IssuerConfig>,
}

/// A tenant's issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer's name, as credentials show it.
    pub name: String,
    /// The signing key: a PKCS#8 PEM file of an Ed25519 or P-256 private key
    /// (`openssl genpkey -algorithm ed25519`; a mounted Secret).
    pub key_file: PathBuf,
}

/// Why the credentials could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A key file could not be read or is not a usable key.
    #[error("credentials issuer of tenant {tenant:?}: {reason}")]
    Key {
        /// The tenant.
        tenant: String,
        /// Why.
        reason: String,
    },
    /// Issuers without a base URL.
    #[error("api.credentials.base_url must be set when api.credentials.issuers names a tenant")]
    NoBaseUrl,
    /// The rules file.
    #[error(transparent)]
    Rules(#[from] processors::achievements::rules::RulesError),
}

/// A signing key and its public JWK.
enum SigningKey {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

struct Issuer {
    name: String,
    key: SigningKey,
    kid: String,
    jwk: Value,
}

/// The issuers, the rules and where they are published.
pub struct Credentials {
    base_url: String,
    issuers: BTreeMap<String, Issuer>,
    rules: Rules,
    rng: SystemRandom,
}

impl Credentials {
    /// Reads every issuer's key and the rules.
    pub fn load(config: &CredentialsConfig) -> Result<Credentials, CredentialsError> {
        let base_url = match (&config.base_url, config.issuers.is_empty()) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, true) => String::new(),
            (None, false) => return Err(CredentialsError::NoBaseUrl),
        };
        let mut issuers = BTreeMap::new();
        for (tenant, issuer) in &config.issuers {
            let fail = |reason: String| CredentialsError::Key { tenant: tenant.clone(), reason };
            let pem =
                std::fs::read_to_string(&issuer.key_file).map_err(|e| fail(format!("cannot read {}: {e}", issuer.key_file.display())))?;
            let der = pem_body(&pem).ok_or_else(|| fail(format!("{} is not a PEM private key", issuer.key_file.display())))?;
            let (key, public, jwk_base) = if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
                let x = URL_SAFE_NO_PAD.encode(k.public_key().as_ref());
                let public = k.public_key().as_ref().to_vec();
                (SigningKey::Ed25519(k), public, json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}))
            } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new()) {
                // An uncompressed point: 0x04, then x and y.
                let point = k.public_key().as_ref().to_vec();
                let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]));
                (SigningKey::P256(k), point, json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256"}))
            } else {
                return Err(fail(format!("{} holds neither an Ed25519 nor a P-256 PKCS#8 private key", issuer.key_file.display())));
            };
            let digest = ring::digest::digest(&ring::digest::SHA256, &public);
            let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
            let mut jwk = jwk_base;
            jwk["kid"] = json!(kid);
            jwk["use"] = json!("sig");
            issuers.insert(tenant.clone(), Issuer { name: issuer.name.clone(), key, kid, jwk });
        }
        let rules = Rules::load(config.rules_file.as_deref())?;
        Ok(Credentials { base_url, issuers, rules, rng: SystemRandom::new() })
    }

    fn issuer(&self, tenant: &str) -> Result<&Issuer, Problem> {
        self.issuers.get(tenant).ok_or_else(|| {
            Problem::not_found(format!("tenant {tenant:?} issues no credentials (api.credentials.issuers has no key for it)"))
        })
    }

    fn issuer_id(&self, tenant: &str) -> String {
        format!("{}/v1/issuers/{}", self.base_url, urlencode(tenant))
    }

    fn status_list_url(&self, tenant: &str) -> String {
        format!("{}/status/revocation", self.issuer_id(tenant))
    }

    /// The compact JWS of `payload`, signed with the tenant's key.
    fn sign(&self, issuer: &Issuer, payload: &Value) -> Result<String, Problem> {
        let alg = match issuer.key {
            SigningKey::Ed25519(_) => "EdDSA",
            SigningKey::P256(_) => "ES256",
        };
        let header = json!({"alg": alg, "kid": issuer.kid, "typ": "vc+jwt"});
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(payload.to_string()));
        let signature = match &issuer.key {
            SigningKey::Ed25519(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            SigningKey::P256(k) => {
                k.sign(&self.rng, input.as_bytes()).map_err(|_| Problem::internal("the credential could not be signed"))?.as_ref().to_vec()
            }
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The issuer's `Profile`.
    fn profile(&self, tenant: &str, issuer: &Issuer) -> Value {
        json!({
            "@context": CONTEXT,
            "id": self.issuer_id(tenant),
            "type": ["Profile"],
            "name": issuer.name,
        })
    }

    fn achievement(&self, id: &str) -> Option<&Achievement> {
        self.rules.achievements.iter().find(|a| a.id == id)
    }
}

/// The JSON-LD contexts of an Open Badges 3.0 credential on the VC data model 2.0.
const CONTEXT: [&str; 2] = ["https://www.w3.org/ns/credentials/v2", "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json"];

/// The namespace of credential ids (UUIDv5 of tenant, learner, achievement, course).
const CREDENTIAL_NAMESPACE: Uuid = Uuid::from_u128(0x6c6d_732d_6f62_332d_6372_6564_656e_7469);

/// A status list covers at least this many credentials (the Bitstring Status List's minimum,
/// so that one credential's position says little about who holds it).
const STATUS_LIST_MIN_BITS: usize = 131_072;

/// The routes, to [`crate::Api::merge`].
pub fn router(store: Store, credentials: Arc<Credentials>) -> Router {
    Router::new()
        .route("/v1/learners/{learner_id}/achievements/{achievement_id}/credential", get(get_credential).delete(revoke_credential))
        .route("/v1/issuers/{tenant}", get(get_profile))
        .route("/v1/issuers/{tenant}/jwks", get(get_jwks))
        .route("/v1/issuers/{tenant}/status/revocation", get(get_status_list))
        .with_state((store, credentials))
}

type CredState = State<(Store, Arc<Credentials>)>;

/// `?course_id=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CourseQuery {
    /// The course of a per-course achievement unlocked in several courses
    #[param(min_length = 1, max_length = 128)]
    course_id: Option<String>,
}

/// The 404 answer of both credential routes of a learner, beside [`AccessProblems`]
/// (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum NotIssued {
    /// Not unlocked or not issued, or the tenant issues no credentials
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(ProblemDocument),
}

/// A signed credential as JSON (the other representation is the compact JWT alone, for
/// `Accept: application/vc+jwt`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation: the handlers build the JSON
struct SignedCredential {
    /// The credential (VC data model 2.0)
    #[schema(value_type = Object)]
    credential: Value,
    /// The credential as a compact JWT (typ vc+jwt)
    jwt: String,
}

/// An unlocked achievement as an Open Badges 3.0 credential (learner:read (own) or analytics:read)
#[utoipa::path(
    get,
    path = "/v1/learners/{learner_id}/achievements/{achievement_id}/credential",
    tag = "credentials",
    security(("bearer" = [])),
    params(LearnerPath, ("achievement_id" = String, Path, description = "The achievement", min_length = 1, max_length = 128), CourseQuery),
    responses(
        (status = 200, description = "The signed OpenBadgeCredential", content((SignedCredential = "application/json"), (String = "application/vc+jwt"))),
        (status = 400, description = "Unlocked in several courses: pass `course_id`", body = ProblemDocument, content_type = "application/problem+json"),
        NotIssued,
        AccessProblems,
    )
)]
pub(crate) async fn get_credential(
    State((store, creds)): CredState,
    claims: Claims,
    headers: HeaderMap,
    PathParams((learner_id, achievement_id)): PathParams<(String, String)>,
    Query(q): Query<CourseQuery>,
) -> Result<Response, Problem> {
    check_learner(&claims, &learner_id)?;
    let tenant = claims.tenant.as_str();
    let issuer = creds.issuer(tenant)?;
    let unlocked = processors::achievements::read(&store, tenant, &learner_id).await.map_err(store_problem)?;
    let view = pick(&unlocked, &learner_id, &achievement_id, q.course_id.as_deref())?;
    let course = view.course_id.clone().unwrap_or_default();
    let status = lms_state::credentials::issue(&store, tenant, &learner_id, &achievement_id, &course).await.map_err(store_problem)?;

    let id = Uuid::new_v5(&CREDENTIAL_NAMESPACE, format!("{tenant}\n{learner_id}\n{achievement_id}\n{course}").as_bytes());
    let issuer_id = creds.issuer_id(tenant);
    let subject_id = format!("urn:lms:{}:learner:{}", urlencode(tenant), urlencode(&learner_id));
    let rule = creds.achievement(&achievement_id);
    let description = rule.and_then(|a| a.description.clone()).unwrap_or_else(|| view.title.clone());
    let criteria =
        rule.map_or_else(|| format!("Earned on the learning platform as \u{201c}{}\u{201d}.", view.title), Achievement::criteria_narrative);
    let status_url = creds.status_list_url(tenant);
    let mut achievement = json!({
        "id": format!("{issuer_id}/achievements/{}", urlencode(&achievement_id)),
        "type": ["Achievement"],
        "name": view.title,
        "description": description,
        "criteria": {"narrative": criteria},
    });
    if let Some(c) = &view.course_id {
        achievement["tag"] = json!([format!("course:{c}")]);
    }
    let credential = json!({
        "@context": CONTEXT,
        "id": format!("urn:uuid:{id}"),
        "type": ["VerifiableCredential", "OpenBadgeCredential"],
        "name": view.title,
        "issuer": creds.profile(tenant, issuer),
        "validFrom": view.unlocked_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "credentialSubject": {
            "id": subject_id,
            "type": ["AchievementSubject"],
            "achievement": achievement,
        },
        "credentialStatus": {
            "id": format!("{status_url}#{}", status.index),
            "type": "BitstringStatusListEntry",
            "statusPurpose": "revocation",
            "statusListIndex": status.index.to_string(),
            "statusListCredential": status_url,
        },
    });
    let jwt = creds.sign(issuer, &with_claims(&credential, &issuer_id, &subject_id, view.unlocked_at))?;
    Ok(respond(&headers, credential, jwt))
}

/// The achievement of the path among the learner's unlocked ones: 404 when not unlocked; a
/// per-course one unlocked in several courses needs `?course_id=`.
fn pick<'a>(
    unlocked: &'a [processors::achievements::AchievementView],
    learner: &str,
    achievement: &str,
    course: Option<&str>,
) -> Result<&'a processors::achievements::AchievementView, Problem> {
    let matching: Vec<_> =
        unlocked.iter().filter(|a| a.achievement_id == achievement && course.is_none_or(|c| a.course_id.as_deref() == Some(c))).collect();
    match matching.as_slice() {
        [] => Err(Problem::not_found(format!(
            "learner {learner:?} has not unlocked {achievement:?}{}",
            course.map(|c| format!(" in course {c:?}")).unwrap_or_default()
        ))),
        [one] => Ok(one),
        several => Err(Problem::bad_request(format!(
            "{achievement:?} was unlocked in several courses; pick one with ?course_id= ({})",
            several.iter().filter_map(|a| a.course_id.as_deref()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Revokes the issued credential (admin)
#[utoipa::path(
    delete,
    path = "/v1/learners/{learner_id}/achievements/{achievement_id}/credential",
    tag = "credentials",
    security(("bearer" = [])),
    params(LearnerPath, ("achievement_id" = String, Path, description = "The achievement", min_length = 1, max_length = 128), CourseQuery),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "A path parameter is invalid", body = ProblemDocument, content_type = "application/problem+json"),
        NotIssued,
        AccessProblems,
    )
)]
pub(crate) async fn revoke_credential(
    State((store, creds)): CredState,
    claims: Claims,
    PathParams((learner_id, achievement_id)): PathParams<(String, String)>,
    Query(q): Query<CourseQuery>,
) -> Result<Response, Problem> {
    claims.require(crate::auth::scope::ADMIN)?;
    check_learner(&claims, &learner_id)?;
    creds.issuer(&claims.tenant)?;
    let course = q.course_id.unwrap_or_default();
    let revoked =
        lms_state::credentials::revoke(&store, &claims.tenant, &learner_id, &achievement_id, &course).await.map_err(store_problem)?;
    if revoked {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found(format!(
            "no credential of {achievement:?} was issued to learner {learner_id:?}",
            achievement = achievement_id
        )))
    }
}

/// The issuer profile of a tenant
#[utoipa::path(
    get,
    path = "/v1/issuers/{tenant}",
    tag = "credentials",
    params(("tenant" = String, Path, description = "The issuing tenant", min_length = 1, max_length = 128)),
    responses(
        (status = 200, description = "OK", body = Object),
        (status = 404, description = "The tenant issues no credentials", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_profile(State((_, creds)): CredState, PathParams(tenant): PathParams<String>) -> Result<Json<Value>, Problem> {
    let issuer = creds.issuer(&tenant)?;
    Ok(Json(creds.profile(&tenant, issuer)))
}

/// The issuer's public keys (JWK set)
#[utoipa::path(
    get,
    path = "/v1/issuers/{tenant}/jwks",
    tag = "credentials",
    params(("tenant" = String, Path, description = "The issuing tenant", min_length = 1, max_length = 128)),
    responses(
        (status = 200, description = "OK", body = Object),
        (status = 404, description = "The tenant issues no credentials", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_jwks(State((_, creds)): CredState, PathParams(tenant): PathParams<String>) -> Result<Json<Value>, Problem> {
    let issuer = creds.issuer(&tenant)?;
    Ok(Json(json!({"keys": [issuer.jwk]})))
}

/// The issuer's revocation status list (BitstringStatusListCredential)
#[utoipa::path(
    get,
    path = "/v1/issuers/{tenant}/status/revocation",
    tag = "credentials",
    params(("tenant" = String, Path, description = "The issuing tenant", min_length = 1, max_length = 128)),
    responses(
        (status = 200, description = "OK", content((SignedCredential = "application/json"), (String = "application/vc+jwt"))),
        (status = 404, description = "The tenant issues no credentials", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_status_list(
    State((store, creds)): CredState,
    headers: HeaderMap,
    PathParams(tenant): PathParams<String>,
) -> Result<Response, Problem> {
    let issuer = creds.issuer(&tenant)?;
    let (revoked, end) = lms_state::credentials::revoked(&store, &tenant).await.map_err(store_problem)?;
    let bits = usize::try_from(end).unwrap_or(0).max(STATUS_LIST_MIN_BITS).div_ceil(8) * 8;
    let mut list = vec![0u8; bits / 8];
    for i in revoked.into_iter().filter_map(|i| usize::try_from(i).ok()) {
        // Index 0 is the most significant bit of the first byte.
        list[i / 8] |= 0x80 >> (i % 8);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&list).map_err(|_| Problem::internal("the status list could not be compressed"))?;
    let compressed = gz.finish().map_err(|_| Problem::internal("the status list could not be compressed"))?;
    let url = creds.status_list_url(&tenant);
    let issuer_id = creds.issuer_id(&tenant);
    let now = Utc::now();
    let credential = json!({
        "@context": ["https://www.w3.org/ns/credentials/v2"],
        "id": url,
        "type": ["VerifiableCredential", "BitstringStatusListCredential"],
        "issuer": issuer_id,
        "validFrom": now.to_rfc3339_opts(SecondsFormat::Secs, true),
        "credentialSubject": {
            "id": format!("{url}#list"),
            "type": "BitstringStatusList",
            "statusPurpose": "revocation",
            // Multibase base64url (`u`) of the GZIP-compressed bitstring.
            "encodedList": format!("u{}", URL_SAFE_NO_PAD.encode(compressed)),
        },
    });
    let jwt = creds.sign(issuer, &with_claims(&credential, &issuer_id, &url, now))?;
    Ok(respond(&headers, credential, jwt))
}

/// The credential with the JWT registered claims beside it.
fn with_claims(credential: &Value, issuer_id: &str, subject: &str, at: DateTime<Utc>) -> Value {
    let mut payload = credential.clone();
    payload["iss"] = json!(issuer_id);
    payload["sub"] = json!(subject);
    payload["jti"] = credential["id"].clone();
    payload["nbf"] = json!(at.timestamp());
    payload["iat"] = json!(at.timestamp());
    payload
}

/// The compact JWT for `Accept: application/vc+jwt`, else `{credential, jwt}`.
fn respond(headers: &HeaderMap, credential: Value, jwt: String) -> Response {
    let wants_jwt = headers.get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/vc+jwt"));
    if wants_jwt {
        let mut r = jwt.into_response();
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/vc+jwt"));
        r
    } else {
        Json(json!({"credential": credential, "jwt": jwt})).into_response()
    }
}

/// The base64 body of a PEM document (`-----BEGIN …-----` lines dropped).
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("-----")).collect();
    STANDARD.decode(body).ok().filter(|b| !b.is_empty())
}

/// Everything but RFC 3986's unreserved characters is escaped in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `text` percent-encoded for a URL path segment.
fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(urlencode("acme"), "acme");
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn issuers_need_a_base_url_and_a_usable_key() {
        let mut config = CredentialsConfig::default();
        assert!(Credentials::load(&config).is_ok(), "no issuer, nothing to read");
        config.issuers.insert("acme".into(), IssuerConfig { name: "Acme".into(), key_file: "/nonexistent/key.pem".into() });
        assert!(matches!(Credentials::load(&config), Err(CredentialsError::NoBaseUrl)));
        config.base_url = Some("https://lms.example.org/".into());
        let err = Credentials::load(&config).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("acme") && err.contains("/nonexistent/key.pem"), "{err}");
    }
}
