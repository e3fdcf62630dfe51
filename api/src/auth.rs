//! Bearer-token authentication (JSON Web Tokens) and scope checks.
//!
//! Two kinds of token are accepted: HS256 tokens signed with the shared secret
//! (`LMS_JWT_SECRET`: the demo, tests and operator tools), and RS256/ES256 tokens of the
//! configured identity providers ([`crate::config::JwtIssuerConfig`]), verified with the
//! keys their JWKS URL publishes (module `jwks`), with `iss` and `aud` checked. A token whose
//! unverified `iss` names a configured issuer is verified only with that issuer's keys;
//! every other token only as HS256 with the secret.
//!
//! A token's claims are `sub` (the caller: a learner id for learner tokens), `tenant`,
//! `scope` (space-separated, see [`scope`]) and `exp` (required); an issuer may carry the
//! tenant in another claim and the scopes as an `scp` array. A missing, malformed, forged
//! (bad signature, `alg: none`, another algorithm than the key's), expired, foreign (`iss`,
//! `aud`) token is answered 401; a valid token without the needed scope 403.
//!
//! Routers merged into the [`crate::Api`] from other crates authenticate the same way: the
//! API puts its [`Authenticator`] into every request's extensions, and the [`Claims`]
//! extractor verifies the request's token with it:
//!
//! ```
//! use api::auth::{Claims, scope};
//! use api::problem::Problem;
//! use axum::extract::Path;
//!
//! async fn progress(claims: Claims, Path(learner_id): Path<String>) -> Result<String, Problem> {
//!     claims.may_read_learner(&learner_id)?;
//!     Ok(format!("progress of {learner_id} in tenant {}", claims.tenant))
//! }
//! let _router: axum::Router = axum::Router::new().route("/v1/learners/{learner_id}/progress", axum::routing::get(progress));
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::JwtIssuerConfig;
use crate::problem::Problem;

mod jwks;

/// The scopes of the contract.
pub mod scope {
    /// Send events (`POST /v1/events`, xAPI, enrollments).
    pub const EVENTS_WRITE: &str = "events:write";
    /// Read the tenant's analytics and any learner of the tenant.
    pub const ANALYTICS_READ: &str = "analytics:read";
    /// Read one's own learner resources (`sub` = learner id).
    pub const LEARNER_READ: &str = "learner:read";
    /// Everything.
    pub const ADMIN: &str = "admin";
}

/// The verified claims of a request's bearer token.
///
/// As an extractor it answers 401 (as a [`Problem`]) when the token is missing or invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The caller: a learner id for learner tokens, a service or user name otherwise.
    pub sub: String,
    /// The tenant every request of this token is scoped to.
    pub tenant: String,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

impl Claims {
    /// The scopes, one by one.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }

    /// True when the token has `scope` or `admin`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope || s == scope::ADMIN)
    }

    /// Ok when the token has `scope` (or `admin`), else 403.
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        if self.has_scope(scope) { Ok(()) } else { Err(Problem::forbidden(format!("the token lacks the scope `{scope}`"))) }
    }

    /// Ok when the token may read the resources of `learner_id` in its tenant: with
    /// `learner:read` for itself (`sub` = learner id), with `analytics:read` for any learner,
    /// with `admin` for all; else 403.
    pub fn may_read_learner(&self, learner_id: &str) -> Result<(), Problem> {
        if self.has_scope(scope::ANALYTICS_READ) || (self.has_scope(scope::LEARNER_READ) && self.sub == learner_id) {
            Ok(())
        } else if self.has_scope(scope::LEARNER_READ) {
            Err(Problem::forbidden("a learner token may read only its own learner resources"))
        } else {
            Err(Problem::forbidden(format!(
                "reading a learner needs the scope `{}` (own resources) or `{}`",
                scope::LEARNER_READ,
                scope::ANALYTICS_READ
            )))
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token: send `Authorization: Bearer <JWT>`")]
    Missing,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The signature does not match (forged or signed with another secret).
    #[error("the token signature is invalid")]
    BadSignature,
    /// Not a JWT, not HS256 (`alg: none` included), or claims missing or of the wrong type.
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

/// Verifies bearer tokens; shared by every router of the API.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    issuers: Vec<Arc<jwks::Issuer>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self.issuers.iter().map(|i| i.issuer()).collect();
        f.debug_struct("Authenticator").field("algorithm", &"HS256").field("issuers", &issuers).finish_non_exhaustive()
    }
}

/// The `iss` of a token's payload, read before any verification (only to choose the keys).
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
}

impl Authenticator {
    /// An authenticator of HS256 tokens signed with `secret`, tolerating `leeway_s` seconds
    /// of clock skew on `exp`.
    pub fn hs256(secret: &[u8], leeway_s: u64) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = leeway_s;
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::from(["exp".to_owned()]);
        Authenticator { key: DecodingKey::from_secret(secret), validation, issuers: Vec::new() }
    }

    /// Also accepts the RS256/ES256 tokens of `issuers`. Their keys are fetched when first
    /// needed and refreshed by [`Authenticator::readiness_checks`].
    #[must_use]
    pub fn with_issuers(mut self, issuers: &[JwtIssuerConfig]) -> Authenticator {
        let leeway_s = self.validation.leeway;
        self.issuers = issuers.iter().map(|c| Arc::new(jwks::Issuer::new(c.clone(), leeway_s))).collect();
        self
    }

    /// One readiness check per issuer, `jwks:<issuer>`: it refreshes the issuer's key set
    /// every `refresh_min_interval_s` and is unready, naming the URL and the cause, while the
    /// last fetch failed (the cached keys stay in use).
    pub fn readiness_checks(&self) -> Vec<Box<dyn crate::ReadinessCheck>> {
        self.issuers
            .iter()
            .map(|issuer| {
                let issuer = Arc::clone(issuer);
                crate::readiness_fn(format!("jwks:{}", issuer.issuer()), move || {
                    let issuer = Arc::clone(&issuer);
                    Box::pin(async move { issuer.check().await })
                })
            })
            .collect()
    }

    /// Verifies a token (without the `Bearer ` prefix) and returns its claims: with the keys
    /// of the configured issuer its `iss` names, else as HS256 with the secret.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if !self.issuers.is_empty()
            && let Some(iss) = unverified_issuer(token)
            && let Some(issuer) = self.issuers.iter().find(|i| i.issuer() == iss)
        {
            let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("not a well-formed JWT".to_owned()))?;
            return issuer.verify(token, &header).await;
        }
        self.verify_hs256(token)
    }

    fn verify_hs256(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::Invalid("only HS256 tokens of the shared secret and tokens of a configured issuer are accepted".to_owned())
            }
            ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("the claim `{c}` is required")),
            ErrorKind::Json(j) => AuthError::Invalid(format!("bad header or claims ({j})")),
            _ => AuthError::Invalid("not a well-formed JWT".to_owned()),
        })?;
        let claims = data.claims;
        if claims.tenant.is_empty() || claims.sub.is_empty() {
            return Err(AuthError::Invalid("the claims `sub` and `tenant` must not be empty".to_owned()));
        }
        Ok(claims)
    }

    /// Verifies the `Authorization` header value of a request.
    pub async fn verify_header(&self, value: Option<&str>) -> Result<Claims, AuthError> {
        let value = value.ok_or(AuthError::Missing)?.trim();
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        self.verify(token.trim()).await
    }

    /// Like [`Authenticator::verify_header`], and also accepts `Basic` credentials whose
    /// password is the token (the user name is ignored): for xAPI emitters that can only be
    /// configured with a key and a secret, as LRS clients often are.
    pub async fn verify_header_or_basic(&self, value: Option<&str>) -> Result<Claims, AuthError> {
        let Some((scheme, credentials)) = value.map(str::trim).and_then(|v| v.split_once(' ')) else {
            return Err(AuthError::Missing);
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return self.verify_header(value).await;
        }
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| AuthError::Invalid("malformed Basic credentials".to_owned()))?;
        let (_, password) = decoded.split_once(':').ok_or_else(|| AuthError::Invalid("malformed Basic credentials".to_owned()))?;
        self.verify(password).await
    }
}

/// Signs claims as an HS256 token: for tests, load generators and operator tools.
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> String {
    // Encoding a struct of strings and an integer with a valid key cannot fail.
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap_or_default()
}

impl<S: Send + Sync> FromRequestParts<S> for Claims {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Claims, Problem> {
        if let Some(claims) = parts.extensions.get::<Claims>() {
            return Ok(claims.clone());
        }
        let Some(auth) = parts.extensions.get::<Arc<Authenticator>>() else {
            tracing::error!("the Claims extractor ran on a route without the API's authenticator layer");
            return Err(Problem::internal("authentication is not configured for this route"));
        };
        let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let claims = auth.verify_header(header).await.map_err(|e| Problem::unauthorized(e.to_string()))?;
        tracing::Span::current().record("tenant", claims.tenant.as_str());
        parts.extensions.insert(claims.clone());
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims(scope: &str, exp_in: i64) -> Claims {
        Claims {
            sub: "learner-1".into(),
            tenant: "acme".into(),
            scope: scope.into(),
            exp: (chrono::Utc::now().timestamp() + exp_in) as u64,
        }
    }

    fn b64(s: &str) -> String {
        // Unpadded base64url, enough for the hand-made tokens below.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[tokio::test]
    async fn the_auth_matrix() {
        let a = Authenticator::hs256(SECRET, 0);
        let good = sign_hs256(SECRET, &claims("events:write", 60));
        assert_eq!(a.verify(&good).await.unwrap().tenant, "acme");
        assert_eq!(a.verify_header(Some(&format!("bearer {good}"))).await.unwrap().sub, "learner-1");
        assert_eq!(a.verify_header(None).await, Err(AuthError::Missing));
        assert_eq!(a.verify_header(Some(&format!("Basic {good}"))).await, Err(AuthError::Missing));
        assert_eq!(a.verify(&sign_hs256(SECRET, &claims("events:write", -120))).await, Err(AuthError::Expired));
        assert_eq!(a.verify(&sign_hs256(b"other", &claims("events:write", 60))).await, Err(AuthError::BadSignature));

        // alg: none with the same claims and no signature.
        let payload = serde_json::to_string(&claims("admin", 60)).unwrap();
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&payload));
        assert!(matches!(a.verify(&none).await, Err(AuthError::Invalid(_))), "{:?}", a.verify(&none).await);
        // HS512 signed with the right secret is still refused.
        let hs512 = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims("admin", 60), &EncodingKey::from_secret(SECRET)).unwrap();
        assert!(matches!(a.verify(&hs512).await, Err(AuthError::Invalid(_))));
        // exp is required.
        let no_exp = serde_json::json!({"sub": "s", "tenant": "acme", "scope": "admin"});
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &no_exp, &EncodingKey::from_secret(SECRET)).unwrap();
        assert!(matches!(a.verify(&t).await, Err(AuthError::Invalid(m)) if m.contains("exp")));
        // tenant is required.
        let no_tenant = serde_json::json!({"sub": "s", "scope": "admin", "exp": u64::MAX / 2});
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &no_tenant, &EncodingKey::from_secret(SECRET)).unwrap();
        assert!(matches!(a.verify(&t).await, Err(AuthError::Invalid(m)) if m.contains("tenant")));
        assert!(matches!(a.verify("garbage").await, Err(AuthError::Invalid(_))));

        use base64::Engine as _;
        let basic = |user_pass: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass));
        assert_eq!(a.verify_header_or_basic(Some(&basic(&format!("moodle:{good}")))).await.unwrap().tenant, "acme");
        assert_eq!(a.verify_header_or_basic(Some(&format!("Bearer {good}"))).await.unwrap().tenant, "acme");
        assert!(a.verify_header_or_basic(Some(&basic("moodle:not-a-token"))).await.is_err());
        assert!(a.verify_header_or_basic(Some("Basic %%%")).await.is_err());
        assert!(a.verify_header(Some(&basic(&format!("moodle:{good}")))).await.is_err(), "Basic only where asked for");
    }

    #[test]
    fn scopes() {
        let learner = claims("learner:read", 60);
        assert!(learner.may_read_learner("learner-1").is_ok());
        assert_eq!(learner.may_read_learner("learner-2").unwrap_err().status, 403);
        assert_eq!(learner.require(scope::EVENTS_WRITE).unwrap_err().status, 403);
        let analyst = claims("analytics:read events:write", 60);
        assert!(analyst.may_read_learner("anyone").is_ok());
        assert!(analyst.require(scope::EVENTS_WRITE).is_ok());
        let admin = claims("admin", 60);
        assert!(admin.require(scope::EVENTS_WRITE).is_ok() && admin.may_read_learner("x").is_ok());
        assert_eq!(claims("", 60).may_read_learner("learner-1").unwrap_err().status, 403);
    }
}
