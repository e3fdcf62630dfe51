//! Tokens of identity providers: RS256/ES256 JSON Web Tokens verified with the keys an issuer
//! publishes as a JWK Set.
//!
//! Each configured issuer keeps the keys of its last successful fetch. A token naming a
//! `kid` that is not among them fetches the set again, at most once per
//! `refresh_min_interval_s` (concurrent requests wait for the one fetch); the readiness task
//! refreshes the set as often, so a rotation is picked up and an unreachable endpoint shows
//! in `/readyz`. A failed fetch keeps the cached keys.
//!
//! **Invariant**: the algorithm a token is verified with is the one of the published key
//! (its `kty`, `crv` and `alg`), never the token header's; a header naming any other
//! algorithm (`none`, `HS256` with the public key as the secret) is refused before any
//! signature check. Only `RSA` and `EC` keys are taken from a set: a symmetric (`oct`) key
//! published by mistake is ignored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{AuthError, Claims};
use crate::config::{JwtIssuerConfig, ScopeClaim};

/// One published verification key.
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys of the last successful fetch and how the last fetch went.
#[derive(Default)]
struct State {
    keys: Arc<HashMap<String, Arc<Key>>>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    fetched_once: bool,
}

/// A configured issuer with its cached key set.
pub(crate) struct Issuer {
    config: JwtIssuerConfig,
    http: reqwest::Client,
    leeway_s: u64,
    state: Mutex<State>,
    /// Held while fetching, so that concurrent unknown `kid`s cause one fetch.
    fetching: tokio::sync::Mutex<()>,
}

/// Why a JWK Set could not be used.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("cannot fetch: {0}")]
    Http(#[from] reqwest::Error),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("not a JWK Set: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no usable RSA or EC signing key in the set")]
    NoKeys,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// The algorithm and verification key of a published key; `None` for keys this API does not
/// verify with (symmetric, encryption, unknown curves, an `alg` that does not fit the key).
fn key_of(jwk: &Jwk) -> Option<Key> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let (algorithm, key) = match jwk.kty.as_str() {
        "RSA" => {
            let algorithm = match jwk.alg.as_deref() {
                None | Some("RS256") => Algorithm::RS256,
                Some("RS384") => Algorithm::RS384,
                Some("RS512") => Algorithm::RS512,
                Some("PS256") => Algorithm::PS256,
                Some("PS384") => Algorithm::PS384,
                Some("PS512") => Algorithm::PS512,
                Some(_) => return None,
            };
            (algorithm, DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?).ok()?)
        }
        "EC" => {
            let algorithm = match (jwk.crv.as_deref(), jwk.alg.as_deref()) {
                (Some("P-256"), None | Some("ES256")) => Algorithm::ES256,
                (Some("P-384"), None | Some("ES384")) => Algorithm::ES384,
                _ => return None,
            };
            (algorithm, DecodingKey::from_ec_components(jwk.x.as_deref()?, jwk.y.as_deref()?).ok()?)
        }
        _ => return None,
    };
    Some(Key { algorithm, key })
}

/// The usable keys of a JWK Set document, by `kid` (a key without `kid` under "").
fn parse_set(body: &[u8]) -> Result<HashMap<String, Arc<Key>>, FetchError> {
    let set: JwkSet = serde_json::from_slice(body)?;
    let keys: HashMap<String, Arc<Key>> = set
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(|jwk| Some((jwk.kid.clone().unwrap_or_default(), Arc::new(key_of(&jwk)?))))
        .collect();
    if keys.is_empty() { Err(FetchError::NoKeys) } else { Ok(keys) }
}

impl Issuer {
    pub(crate) fn new(config: JwtIssuerConfig, leeway_s: u64) -> Issuer {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_else(|_| reqwest::Client::new());
        Issuer { config, http, leeway_s, state: Mutex::new(State::default()), fetching: tokio::sync::Mutex::new(()) }
    }

    pub(crate) fn issuer(&self) -> &str {
        &self.config.issuer
    }

    fn min_interval(&self) -> Duration {
        Duration::from_secs(self.config.refresh_min_interval_s)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self, kid: &str) -> Option<Arc<Key>> {
        self.state().keys.get(kid).cloned()
    }

    /// True when the last fetch is older than the minimum interval (or there was none).
    fn may_fetch(&self) -> bool {
        self.state().last_attempt.is_none_or(|t| t.elapsed() >= self.min_interval())
    }

    /// Fetches the set once if the minimum interval allows; keeps the cached keys on failure.
    async fn refresh(&self) {
        let _fetching = self.fetching.lock().await;
        if !self.may_fetch() {
            return;
        }
        self.state().last_attempt = Some(Instant::now());
        let url = &self.config.jwks_url;
        let result = async {
            let response = self.http.get(url).send().await?;
            if !response.status().is_success() {
                return Err(FetchError::Status(response.status().as_u16()));
            }
            parse_set(&response.bytes().await?)
        }
        .await;
        let mut state = self.state();
        match result {
            Ok(keys) => {
                if state.last_error.take().is_some() || !state.fetched_once {
                    tracing::info!(issuer = %self.config.issuer, jwks_url = %url, keys = keys.len(), "JWKS fetched");
                }
                state.keys = Arc::new(keys);
                state.fetched_once = true;
            }
            Err(error) => {
                if state.last_error.is_none() {
                    tracing::warn!(issuer = %self.config.issuer, jwks_url = %url, %error, cached_keys = state.keys.len(), "JWKS fetch failed; the cached keys stay in use");
                }
                state.last_error = Some(error.to_string());
            }
        }
    }

    /// The readiness check: refreshes the set when due; unready while the last fetch failed.
    pub(crate) async fn check(&self) -> Result<(), String> {
        if self.may_fetch() {
            self.refresh().await;
        }
        let state = self.state();
        match &state.last_error {
            None => Ok(()),
            Some(error) => Err(format!(
                "JWKS {} of issuer {}: {error}; {} cached keys kept",
                self.config.jwks_url,
                self.config.issuer,
                state.keys.len()
            )),
        }
    }

    /// Verifies a token whose (unverified) `iss` is this issuer's.
    pub(crate) async fn verify(&self, token: &str, header: &jsonwebtoken::Header) -> Result<Claims, AuthError> {
        let kid = header.kid.clone().unwrap_or_default();
        let key = match self.cached(&kid) {
            Some(key) => key,
            None => {
                self.refresh().await;
                self.cached(&kid).ok_or_else(|| AuthError::Invalid(format!("no key `{kid}` is published by the issuer")))?
            }
        };
        if header.alg != key.algorithm {
            return Err(AuthError::Invalid(format!("the token names {:?}, its key is a {:?} key", header.alg, key.algorithm)));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.algorithms = vec![key.algorithm];
        validation.leeway = self.leeway_s;
        validation.validate_exp = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.required_spec_claims = HashSet::from(["exp".to_owned(), "iss".to_owned(), "aud".to_owned()]);
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAudience => AuthError::Invalid("the token is not for this audience (`aud`)".to_owned()),
            ErrorKind::InvalidIssuer => AuthError::Invalid("the token's issuer (`iss`) is not accepted".to_owned()),
            ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("the claim `{c}` is required")),
            _ => AuthError::Invalid("not a well-formed JWT of the issuer".to_owned()),
        })?;
        self.claims(&data.claims)
    }

    /// The API's claims from an issuer's, by the configured tenant and scope claims.
    fn claims(&self, raw: &Value) -> Result<Claims, AuthError> {
        let string = |name: &str| raw.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let sub = string("sub").ok_or_else(|| AuthError::Invalid("the claim `sub` is required".to_owned()))?;
        let tenant = string(&self.config.tenant_claim)
            .ok_or_else(|| AuthError::Invalid(format!("the claim `{}` (the tenant) is required", self.config.tenant_claim)))?;
        let scope = match self.config.scope_claim {
            ScopeClaim::Scope => string("scope").unwrap_or_default(),
            ScopeClaim::Scp => match raw.get("scp") {
                None => String::new(),
                Some(Value::Array(items)) => {
                    let scopes: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                    scopes.ok_or_else(|| AuthError::Invalid("the claim `scp` must be an array of strings".to_owned()))?.join(" ")
                }
                Some(_) => return Err(AuthError::Invalid("the claim `scp` must be an array of strings".to_owned())),
            },
        };
        let exp = raw.get("exp").and_then(Value::as_u64).ok_or_else(|| AuthError::Invalid("the claim `exp` is required".to_owned()))?;
        Ok(Claims { sub, tenant, scope, exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signing_rsa_and_ec_keys_are_taken() {
        // The RFC 7517 appendix A.1 public keys, an `oct` key and an encryption key.
        let set = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
            {"kty": "RSA", "kid": "rsa", "alg": "RS256", "e": "AQAB",
             "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "e": "AQAB", "n": "0vx7"},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"}
        ]});
        let keys = parse_set(set.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["ec", "rsa"]);
        assert_eq!(keys["ec"].algorithm, Algorithm::ES256);
        assert_eq!(keys["rsa"].algorithm, Algorithm::RS256);
        assert!(matches!(parse_set(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#), Err(FetchError::NoKeys)));
        assert!(matches!(parse_set(b"<html>"), Err(FetchError::Json(_))));
    }

    #[test]
    fn tenant_and_scopes_come_from_the_configured_claims() {
        let config = JwtIssuerConfig {
            issuer: "https://idp.example".into(),
            audience: "lms".into(),
            jwks_url: "http://127.0.0.1:1/jwks".into(),
            tenant_claim: "org".into(),
            scope_claim: ScopeClaim::Scp,
            refresh_min_interval_s: 60,
        };
        let issuer = Issuer::new(config, 0);
        let c =
            issuer.claims(&serde_json::json!({"sub": "u", "org": "acme", "scp": ["events:write", "analytics:read"], "exp": 9})).unwrap();
        assert_eq!((c.tenant.as_str(), c.scope.as_str()), ("acme", "events:write analytics:read"));
        assert!(issuer.claims(&serde_json::json!({"sub": "u", "tenant": "acme", "exp": 9})).is_err(), "the tenant is `org` here");
        assert!(issuer.claims(&serde_json::json!({"sub": "u", "org": "acme", "scp": "admin", "exp": 9})).is_err());
    }
}
