//! Cross-origin requests from browsers (CORS) for the configured origins.
//!
//! Learning content running in a browser (xAPI packages, a JavaScript tracker on the LMS's
//! own domain) calls the write and read routes from another origin. For an origin listed in
//! `cors_allowed_origins` the answers carry `Access-Control-Allow-Origin`, and a preflight
//! (`OPTIONS` with `Access-Control-Request-Method`) is answered 200 with the methods and
//! headers allowed; for any other origin the answers carry no CORS header, so the browser
//! refuses. Credentials (cookies) are not allowed: the API authenticates with bearer tokens.

use std::time::Duration;

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer of `origins`; `None` when the list is empty. An origin must be
/// `scheme://host[:port]`, as browsers send it in `Origin`.
pub(crate) fn layer(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let values = origins
        .iter()
        .map(|o| {
            let well_formed = (o.starts_with("http://") || o.starts_with("https://"))
                && !o.split_once("://").is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'));
            if !well_formed {
                return Err(format!("cors_allowed_origins: `{o}` is not an origin (scheme://host[:port], no path)"));
            }
            HeaderValue::from_str(o).map_err(|_| format!("cors_allowed_origins: `{o}` is not a valid header value"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(values))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                AUTHORIZATION,
                CONTENT_TYPE,
                HeaderName::from_static(crate::xapi::VERSION_HEADER),
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("tracestate"),
                HeaderName::from_static("baggage"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([RETRY_AFTER, HeaderName::from_static(crate::xapi::VERSION_HEADER), HeaderName::from_static("x-request-id")])
            .max_age(PREFLIGHT_MAX_AGE),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        assert!(layer(&[]).unwrap().is_none());
        assert!(layer(&["https://lms.example.org".into(), "http://127.0.0.1:8000".into()]).unwrap().is_some());
        for bad in ["*", "lms.example.org", "https://lms.example.org/", "https://"] {
            assert!(layer(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
