//! HTTP surface: the public API, the admin API, their shared error type, and the OpenAPI
//! documents describing them (`/openapi.json` on each listener, see [`openapi`]).
//!
//! The public listener serves the public API and its document; the admin listener serves
//! the admin API behind its token, plus `/metrics` and the admin document without it
//! ([`operations`]).

pub mod admin;
pub mod email;
mod errors;
pub mod oauth;
pub mod openapi;
mod operations;
pub mod public;
mod request_log;
mod responses;
mod revocations;
pub mod sms;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The body of every error answer.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "invalid_request", "error_description": "malformed JSON body: expected value at line 1 column 1"}))]
pub struct ErrorBody {
    /// Machine-readable code: `invalid_request`, `invalid_grant`, `invalid_client`,
    /// `unauthorized_client`, `invalid_token`, `unsupported_grant_type`, `weak_password`,
    /// `disabled`, `forbidden`, `not_found`, `method_not_allowed`, `conflict`,
    /// `too_many_requests`, `unavailable`, `server_error`, `email_not_confirmed`.
    pub error: String,
    /// Human-readable explanation (never contains secrets).
    pub error_description: String,
}

/// The `realm` of every `WWW-Authenticate` challenge of the issuer.
pub(crate) const REALM: &str = "portcullis-issuer";

/// An error answer: `{"error", "error_description"}` with the right status.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human-readable text (never secrets).
    pub description: String,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(header::HeaderName, String)>,
}

impl ApiError {
    /// A 4xx/5xx with code and description.
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            description: description.into(),
            headers: Vec::new(),
        }
    }

    /// 400 invalid_request.
    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 401 with a challenge.
    pub fn unauthorized(code: &'static str, description: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, code, description);
        e.headers.push((
            header::WWW_AUTHENTICATE,
            format!("Bearer realm=\"{REALM}\""),
        ));
        e
    }

    /// 429 with `Retry-After`.
    pub fn too_many(retry_after: i64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many attempts; try again later",
        );
        e.headers
            .push((header::RETRY_AFTER, retry_after.max(1).to_string()));
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            error_description: self.description,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        for (n, v) in self.headers {
            if let Ok(v) = v.parse() {
                resp.headers_mut().insert(n, v);
            }
        }
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
            }
            crate::store::StoreError::Conflict(field) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{field} is already taken"),
            ),
            other => {
                tracing::error!("store error: {other}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable",
                )
            }
        }
    }
}

impl From<crate::crypto::CryptoError> for ApiError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        tracing::error!("crypto error: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the request could not be completed",
        )
    }
}

/// Parses a query string into `T`, answering bad input with the JSON error shape (axum's
/// own `Query` rejection is plain text).
pub(crate) fn query<T: DeserializeOwned>(q: Option<String>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))
}

/// Parses a JSON body, insisting on `Content-Type: application/json`.
pub fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "send a JSON body with Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// Reads an optional 64-bit integer of a JSON body the way JSON Schema counts integers:
/// `3600` or `3600.0` (a number with no fractional part is an integer, and schema-driven
/// clients send them). Anything else, or out of the `i64` range, is an error.
pub(crate) fn optional_integer<'de, D>(d: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    d.deserialize_option(Integer { text: false })
}

/// [`optional_integer`] for query strings, where every value is text: `100` or `100.0`.
pub(crate) fn optional_integer_text<'de, D>(d: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    d.deserialize_option(Integer { text: true })
}

/// The visitor of [`optional_integer`]: `text` accepts the number written as a string.
struct Integer {
    text: bool,
}

impl<'de> serde::de::Visitor<'de> for Integer {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a 64-bit integer")
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(Some)
            .map_err(|_| E::custom("integer out of the 64-bit range"))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // 2^63 is exactly representable; every f64 with no fractional part in [-2^63, 2^63)
        // is an i64.
        const BOUND: f64 = 9_223_372_036_854_775_808.0;
        if v.fract() == 0.0 && (-BOUND..BOUND).contains(&v) {
            #[allow(clippy::cast_possible_truncation)] // integral and in range: exact
            Ok(Some(v as i64))
        } else {
            Err(E::custom("expected a 64-bit integer"))
        }
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if !self.text {
            return Err(E::invalid_type(serde::de::Unexpected::Str(v), &self));
        }
        let not_integral = match v.parse::<i64>() {
            Ok(n) => return Ok(Some(n)),
            Err(e) => e,
        };
        v.parse::<f64>()
            .ok()
            .and_then(|f| self.visit_f64::<E>(f).ok())
            .ok_or_else(|| E::custom(not_integral))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// The client address the per-IP budgets count against ([`crate::client_addr`]): the peer,
/// or, when the peer is in `trusted_proxies`, what its forwarding headers say; for IPv6 its
/// /64 network ([`crate::client_addr::budget_addr`]). Take it as a handler argument,
/// `ClientIp(ip): ClientIp`. Needs the listener to be served with
/// `into_make_service_with_connect_info::<SocketAddr>()` (the public one is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

impl axum::extract::FromRequestParts<std::sync::Arc<crate::app::App>> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &std::sync::Arc<crate::app::App>,
    ) -> Result<Self, Self::Rejection> {
        let Some(peer) = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        else {
            // A wiring mistake, not the client's: the listener was served without peer info.
            tracing::error!("no peer address: serve this router with connect info");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the request could not be completed",
            ));
        };
        Ok(ClientIp(crate::client_addr::budget_addr(
            crate::client_addr::client_addr(peer.0.ip(), &app.cfg.trusted_proxies, &parts.headers),
        )))
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The user-id and password of an `Authorization: Basic` header, when it is one and decodes.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The key of an `Authorization: ApiKey <key>` header.
fn api_key_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("apikey"))
        .map(|(_, k)| k.trim().to_string())
}

/// JSON 404 for unknown paths (axum's default is an empty body).
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// JSON 405 for known paths with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// Rewrites the body-limit layer's plain-text 413 into the JSON error shape.
pub async fn json_413(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )
        .into_response();
    }
    resp
}

/// Requests larger than this are refused with 413 before parsing (rewritten to an
/// [`ErrorBody`] by [`json_413`]).
pub const MAX_BODY: usize = 64 * 1024;

/// The public API with its body limit, JSON 413 and request log: what the public listener
/// serves (wrap with `into_make_service_with_connect_info::<SocketAddr>`).
pub fn public_app(app: std::sync::Arc<crate::app::App>) -> axum::Router {
    let (routes, _) = public::routes().split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app.clone())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(axum::middleware::from_fn(json_413))
        .layer(axum::middleware::from_fn_with_state(
            app,
            request_log::request_log,
        ))
}

/// What the admin listener serves, with the same layers as [`public_app`]: `/metrics` and
/// the admin document as they are ([`operations`]); every other request goes to the admin
/// API behind its token check (unknown paths included, so they answer 401 without it).
pub fn admin_app(app: std::sync::Arc<crate::app::App>) -> axum::Router {
    let (guarded, _) = admin::routes().split_for_parts();
    let guarded = guarded
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            admin::require_admin,
        ))
        .with_state(app.clone());
    let (open, _) = operations::routes().split_for_parts();
    open.method_not_allowed_fallback(method_not_allowed)
        .with_state(app.clone())
        .fallback_service(guarded)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(axum::middleware::from_fn(json_413))
        .layer(axum::middleware::from_fn_with_state(
            app,
            request_log::request_log,
        ))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::optional_integer")]
        n: Option<i64>,
    }

    #[derive(Deserialize)]
    struct Query {
        #[serde(default, deserialize_with = "super::optional_integer_text")]
        n: Option<i64>,
    }

    fn body(json: &str) -> Result<Option<i64>, serde_json::Error> {
        serde_json::from_str::<Body>(json).map(|b| b.n)
    }

    fn query(q: &str) -> Result<Option<i64>, serde_urlencoded::de::Error> {
        serde_urlencoded::from_str::<Query>(q).map(|b| b.n)
    }

    #[test]
    fn integers_as_json_schema_counts_them() {
        assert_eq!(body("{}").unwrap(), None);
        assert_eq!(body(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(body(r#"{"n": 3600}"#).unwrap(), Some(3600));
        assert_eq!(body(r#"{"n": -2541935.0}"#).unwrap(), Some(-2_541_935));
        assert_eq!(
            body(r#"{"n": 9223372036854775807}"#).unwrap(),
            Some(i64::MAX)
        );
        assert!(body(r#"{"n": 9223372036854775808}"#).is_err());
        assert!(body(r#"{"n": 1.5}"#).is_err());
        assert!(
            body(r#"{"n": "3600"}"#).is_err(),
            "JSON strings stay refused"
        );
        assert_eq!(query("").unwrap(), None);
        assert_eq!(query("n=100").unwrap(), Some(100));
        assert_eq!(query("n=100.0").unwrap(), Some(100));
        assert_eq!(query("n=-9223372036854775808").unwrap(), Some(i64::MIN));
        for bad in [
            "n=",
            "n=x",
            "n=1.5",
            "n=9223372036854775808",
            "n=inf",
            "n=NaN",
        ] {
            assert!(query(bad).is_err(), "{bad}");
        }
        let e = query("n=9223372036854775808").unwrap_err().to_string();
        assert_eq!(e, "number too large to fit in target type");
    }
}
