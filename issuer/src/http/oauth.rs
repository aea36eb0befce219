//! OAuth 2.0 endpoints for clients that speak the standard: `/oauth/token` (RFC 6749 grants
//! `password`, `refresh_token`, `client_credentials` with an API key as the client secret),
//! `/oauth/introspect` (RFC 7662) and `/oauth/revoke` (RFC 7009).
//!
//! The handlers read their form bodies as plain key/value pairs; the `*Form` schema types
//! below exist only to document those forms in the OpenAPI document ([`super::openapi`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{client_ip, ApiError, ErrorBody};
use crate::app::App;
use crate::auth::sessions::Introspection as Found;
use crate::auth::{self, TokenPair};
use crate::crypto::secrets;

/// The OAuth router (merged into the public one).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/introspect", post(introspect))
        .route("/oauth/revoke", post(revoke))
        .with_state(app)
}

fn form(headers: &HeaderMap, body: &Bytes) -> Result<HashMap<String, String>, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "send application/x-www-form-urlencoded (RFC 6749)",
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| ApiError::bad_request("malformed form body"))?;
    let mut out = HashMap::new();
    for (k, v) in pairs {
        // RFC 6749 §3.1: parameters must not be repeated.
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad_request(format!("parameter {k} is repeated")));
        }
    }
    Ok(out)
}

/// `client_secret` from HTTP Basic or the form.
fn client_secret(headers: &HeaderMap, f: &HashMap<String, String>) -> Option<String> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b)| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|t| t.split_once(':').map(|(_, secret)| secret.to_string()));
    basic.or_else(|| f.get("client_secret").cloned())
}

/// OAuth 2.0 grant types accepted by `/oauth/token`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum GrantType {
    /// RFC 6749 §4.3: `username` and `password`.
    Password,
    /// RFC 6749 §6: `refresh_token`.
    RefreshToken,
    /// RFC 6749 §4.4: the API key as the client secret.
    ClientCredentials,
}

// Schema for the OpenAPI document only; the handler reads the form as key/value pairs.
/// The `/oauth/token` form (`application/x-www-form-urlencoded`). Parameters must not repeat.
#[derive(ToSchema)]
pub struct TokenForm {
    /// The grant.
    pub grant_type: GrantType,
    /// `password` grant: email or username.
    #[schema(nullable = false)]
    pub username: Option<String>,
    /// `password` grant: the password.
    #[schema(nullable = false)]
    pub password: Option<String>,
    /// `refresh_token` grant: the refresh token to rotate.
    #[schema(nullable = false)]
    pub refresh_token: Option<String>,
    /// `client_credentials` grant: accepted and ignored (the API key names its subject).
    #[schema(nullable = false)]
    pub client_id: Option<String>,
    /// `client_credentials` grant: the API key (`client_secret_post`), unless sent with
    /// HTTP Basic.
    #[schema(nullable = false)]
    pub client_secret: Option<String>,
}

// Schema for the OpenAPI document only; the handler reads the form as key/value pairs.
/// The `/oauth/introspect` form (RFC 7662 §2.1). Parameters must not repeat.
#[derive(ToSchema)]
pub struct IntrospectForm {
    /// An access token or a refresh token.
    pub token: String,
    /// Accepted and ignored: both kinds are tried.
    #[schema(nullable = false)]
    pub token_type_hint: Option<String>,
    /// The caller's API key, unless sent with HTTP Basic, `Authorization: ApiKey`, or the
    /// admin token is used.
    #[schema(nullable = false)]
    pub client_secret: Option<String>,
}

// Schema for the OpenAPI document only; the handler reads the form as key/value pairs.
/// The `/oauth/revoke` form (RFC 7009 §2.1). Parameters must not repeat.
#[derive(ToSchema)]
pub struct RevokeForm {
    /// An access token or a refresh token; its whole session is revoked.
    pub token: String,
    /// Accepted and ignored: both kinds are tried.
    #[schema(nullable = false)]
    pub token_type_hint: Option<String>,
    /// The caller's API key, unless sent with HTTP Basic, `Authorization: ApiKey`, or the
    /// admin token is used.
    #[schema(nullable = false)]
    pub client_secret: Option<String>,
}

/// The introspection answer (RFC 7662 §2.2). Inactive or unknown tokens answer only
/// `{"active": false}`; an active access token answers all its claims (also `aud`, `scope`,
/// `roles`, `amr`, `jti`, ... and custom ones) plus `active` and `token_type`.
// Schema for the OpenAPI document only; the handler writes the JSON itself.
#[derive(ToSchema)]
pub struct Introspection {
    /// Whether the token is valid and its session alive.
    pub active: bool,
    /// `access_token` or `refresh_token` (active tokens only).
    #[schema(nullable = false)]
    pub token_type: Option<String>,
    /// Subject.
    #[schema(nullable = false)]
    pub sub: Option<String>,
    /// Session id.
    #[schema(nullable = false)]
    pub sid: Option<String>,
    /// Issuer.
    #[schema(nullable = false)]
    pub iss: Option<String>,
    /// Expiry (seconds since the epoch; for a refresh token, the session's end).
    #[schema(nullable = false)]
    pub exp: Option<i64>,
    /// Issue time (seconds since the epoch).
    #[schema(nullable = false)]
    pub iat: Option<i64>,
}

/// OAuth 2.0 token endpoint: `password`, `refresh_token` and `client_credentials` grants.
///
/// The client secret of `client_credentials` is an API key, sent with HTTP Basic
/// (`client_secret_basic`, any client id) or in the form (`client_secret_post`).
/// Errors use this API's statuses: bad credentials answer 401 (`invalid_grant` /
/// `invalid_client`).
#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "oauth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    security((), ("basic" = [])),
    responses(
        (status = 200, description = "A token pair", body = TokenPair,
         headers(
             ("Cache-Control" = String, description = "`no-store`"),
             ("Pragma" = String, description = "`no-cache`"),
         )),
        (status = 400, description = "Malformed or repeated parameters, missing parameters (`invalid_request`), unknown grant (`unsupported_grant_type`), or wrong credentials / refresh token (`invalid_grant`, RFC 6749 §5.2)", body = ErrorBody),
        (status = 401, description = "A bad client secret (`invalid_client`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not `application/x-www-form-urlencoded`", body = ErrorBody),
        (status = 429, description = "Too many failed password attempts", body = ErrorBody,
         headers(("Retry-After" = i64, description = "Seconds until the budget resets"))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn token(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    token_grant(&app, peer, &headers, &body)
        .await
        .map_err(|mut e| {
            // RFC 6749 §5.2: a bad grant is a 400; only client authentication failures are 401.
            if e.code == "invalid_grant" {
                e.status = StatusCode::BAD_REQUEST;
                e.headers.clear();
            }
            e
        })
}

async fn token_grant(
    app: &Arc<App>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let (app, headers, body) = (app.clone(), headers.clone(), body.clone());
    let f = form(&headers, &body)?;
    let pair = match f.get("grant_type").map(String::as_str) {
        Some("password") => {
            let (Some(user), Some(pw)) = (f.get("username"), f.get("password")) else {
                return Err(ApiError::bad_request(
                    "grant_type=password needs username and password",
                ));
            };
            auth::password::grant(&app, user, pw.clone(), &client_ip(peer, &headers)).await?
        }
        Some("refresh_token") => {
            let rt = f
                .get("refresh_token")
                .ok_or_else(|| ApiError::bad_request("refresh_token is required"))?;
            auth::sessions::refresh(&app, rt).await?
        }
        Some("client_credentials") => {
            let secret = client_secret(&headers, &f).ok_or_else(|| {
                ApiError::unauthorized(
                    "invalid_client",
                    "client_credentials needs the API key as client_secret",
                )
            })?;
            auth::api_key::grant(&app, &secret).await?
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be password, refresh_token or client_credentials",
            ))
        }
        None => return Err(ApiError::bad_request("grant_type is required")),
    };
    // RFC 6749 §5.1: token responses must not be cached.
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(pair),
    )
        .into_response())
}

/// Introspection and revocation callers: the admin token, or a valid API key.
async fn require_client(
    app: &App,
    headers: &HeaderMap,
    f: &HashMap<String, String>,
) -> Result<(), ApiError> {
    if let Some(t) = super::bearer(headers) {
        if secrets::constant_time_eq(&secrets::hash_token(t), &app.admin_token_hash) {
            return Ok(());
        }
    }
    let key = client_secret(headers, f).or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(s, _)| s.eq_ignore_ascii_case("apikey"))
            .map(|(_, k)| k.trim().to_string())
    });
    let unauthorized = || {
        ApiError::unauthorized(
            "invalid_client",
            "authenticate with an API key or the admin token",
        )
    };
    let key = key.ok_or_else(unauthorized)?;
    auth::api_key::find_valid(app, &key)
        .await?
        .ok_or_else(unauthorized)?;
    Ok(())
}

/// Token introspection (RFC 7662) for authenticated clients: an API key or the admin token.
#[utoipa::path(
    post,
    path = "/oauth/introspect",
    tag = "oauth",
    request_body(content = IntrospectForm, content_type = "application/x-www-form-urlencoded"),
    security(("adminToken" = []), ("apiKey" = []), ("basic" = []), ()),
    responses(
        (status = 200, description = "Whether the token is active, and its claims", body = Introspection),
        (status = 400, description = "Malformed form or missing `token`", body = ErrorBody),
        (status = 401, description = "No valid API key or admin token (`invalid_client`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not `application/x-www-form-urlencoded`", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn introspect(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let f = form(&headers, &body)?;
    require_client(&app, &headers, &f).await?;
    let token = f
        .get("token")
        .ok_or_else(|| ApiError::bad_request("token is required"))?;
    match auth::sessions::introspect(&app, token).await? {
        Found::Inactive => Ok(Json(json!({"active": false}))),
        Found::Access(mut claims) => {
            claims["active"] = json!(true);
            claims["token_type"] = json!("access_token");
            Ok(Json(claims))
        }
        Found::Refresh {
            session: s,
            issued_at,
        } => Ok(Json(json!({
            "active": true, "token_type": "refresh_token", "sub": s.user_id, "sid": s.id,
            "exp": s.expires_at, "iat": issued_at, "iss": app.cfg.issuer,
        }))),
    }
}

/// Token revocation (RFC 7009) for authenticated clients: revokes the token's whole session.
/// Unknown tokens also answer 200.
#[utoipa::path(
    post,
    path = "/oauth/revoke",
    tag = "oauth",
    request_body(content = RevokeForm, content_type = "application/x-www-form-urlencoded"),
    security(("adminToken" = []), ("apiKey" = []), ("basic" = []), ()),
    responses(
        (status = 200, description = "Revoked, or the token was unknown (empty body)"),
        (status = 400, description = "Malformed form or missing `token`", body = ErrorBody),
        (status = 401, description = "No valid API key or admin token (`invalid_client`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body not `application/x-www-form-urlencoded`", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let f = form(&headers, &body)?;
    require_client(&app, &headers, &f).await?;
    let token = f
        .get("token")
        .ok_or_else(|| ApiError::bad_request("token is required"))?;
    auth::sessions::revoke_token(&app, token).await?;
    // RFC 7009 §2.2: unknown tokens are answered with 200 as well.
    Ok(StatusCode::OK)
}
