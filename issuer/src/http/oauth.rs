//! OAuth 2.0 endpoints for clients that speak the standard: `/oauth/token` (RFC 6749 grants
//! `password`, `refresh_token`, `client_credentials` with an API key as the client secret),
//! `/oauth/introspect` (RFC 7662) and `/oauth/revoke` (RFC 7009).
//!
//! Each form body is read into its `*Form` type, the same type the OpenAPI document
//! ([`super::openapi`]) describes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{InvalidClient, NotForm, PayloadTooLarge, TooManyRequests, Unavailable};
use super::{ApiError, ClientIp, ErrorBody};
use crate::app::App;
use crate::auth::sessions::Introspection as Found;
use crate::auth::{self, TokenPair};
use crate::config::DEFAULT_PASSWORD_MAX;
use crate::crypto::secrets;

/// The OAuth routes with their documentation (merged into the public ones).
pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(token))
        .routes(routes!(introspect))
        .routes(routes!(revoke))
}

/// Reads a form body into `T`. RFC 6749 §3.1: unknown parameters are ignored, and a
/// parameter `T` defines must not be repeated.
fn form<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
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
    // serde's derived `Deserialize` ignores unknown fields and refuses a repeated known one
    // with "duplicate field `name`": exactly §3.1, reworded as this API always has.
    serde_urlencoded::from_bytes(body).map_err(|e| {
        let text = e.to_string();
        match text
            .strip_prefix("duplicate field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            Some(name) => ApiError::bad_request(format!("parameter {name} is repeated")),
            None => ApiError::bad_request("malformed form body"),
        }
    })
}

/// `client_secret` from HTTP Basic or the form.
fn client_secret(headers: &HeaderMap, form_secret: Option<&str>) -> Option<String> {
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
    basic.or_else(|| form_secret.map(str::to_string))
}

/// The `/oauth/token` form (`application/x-www-form-urlencoded`). Parameters must not repeat.
///
/// Its schema is written by hand (`token_form_schema`): which parameters are required
/// depends on `grant_type`, which the derive cannot say.
#[derive(Serialize, Deserialize)]
pub struct TokenForm {
    /// The grant. Read as text: an unknown grant answers `unsupported_grant_type`, not a
    /// malformed form.
    pub grant_type: Option<String>,
    /// `password` grant: email or username.
    pub username: Option<String>,
    /// `password` grant: the password.
    pub password: Option<String>,
    /// `refresh_token` grant: the refresh token to rotate.
    pub refresh_token: Option<String>,
    /// Accepted and ignored (the API key names its subject).
    pub client_id: Option<String>,
    /// `client_credentials` grant: the API key (`client_secret_post`), unless sent with
    /// HTTP Basic.
    pub client_secret: Option<String>,
}

impl utoipa::PartialSchema for TokenForm {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        token_form_schema()
    }
}

impl ToSchema for TokenForm {}

/// One object per grant (`oneOf`, told apart by `grant_type`), each requiring what that
/// grant needs: the handler answers 400 `invalid_request` without it.
fn token_form_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let client = serde_json::json!({
        "client_id": {"type": "string", "description": "Accepted and ignored (the API key names its subject)."},
        "client_secret": {"type": "string", "description": "The API key (`client_secret_post`), unless sent with HTTP Basic."},
    });
    let grant = |name: &str, required: &[&str], own: Value, description: &str| {
        let mut properties = client.clone();
        properties["grant_type"] = serde_json::json!({"type": "string", "enum": [name]});
        for (k, v) in own.as_object().into_iter().flatten() {
            properties[k] = v.clone();
        }
        let mut required: Vec<&str> = required.to_vec();
        required.insert(0, "grant_type");
        serde_json::json!({
            "type": "object",
            "title": name,
            "description": description,
            "required": required,
            "properties": properties,
        })
    };
    let schema = serde_json::json!({
        "description": "The `/oauth/token` form (`application/x-www-form-urlencoded`): one of the \
                        three grants. Parameters must not repeat; unknown ones are ignored.",
        "oneOf": [
            grant("password", &["username", "password"], serde_json::json!({
                "username": {"type": "string", "pattern": "\\S",
                             "description": "Email or username (not blank)."},
                "password": {"type": "string", "minLength": 1, "maxLength": DEFAULT_PASSWORD_MAX,
                             "description": "The password (at most `password.max_length` characters, 128 by default)."},
            }), "RFC 6749 §4.3: a login and its password."),
            grant("refresh_token", &["refresh_token"], serde_json::json!({
                "refresh_token": {"type": "string", "description": "The refresh token to rotate."},
            }), "RFC 6749 §6: rotates a refresh token."),
            grant("client_credentials", &[], serde_json::json!({}),
                  "RFC 6749 §4.4: the API key as the client secret (HTTP Basic or `client_secret`)."),
        ],
    });
    serde_json::from_value(schema).expect("the token form schema is a schema")
}

/// The `/oauth/introspect` form (RFC 7662 §2.1). Parameters must not repeat.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct IntrospectForm {
    /// An access token or a refresh token.
    #[schema(value_type = String)]
    pub token: Option<String>,
    /// Accepted and ignored: both kinds are tried.
    #[schema(nullable = false)]
    pub token_type_hint: Option<String>,
    /// The caller's API key, unless sent with HTTP Basic, `Authorization: ApiKey`, or the
    /// admin token is used.
    #[schema(nullable = false)]
    pub client_secret: Option<String>,
}

/// The `/oauth/revoke` form (RFC 7009 §2.1). Parameters must not repeat.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RevokeForm {
    /// An access token or a refresh token; its whole session is revoked.
    #[schema(value_type = String)]
    pub token: Option<String>,
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
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Introspection {
    /// Whether the token is valid and its session alive.
    pub active: bool,
    /// `access_token` or `refresh_token` (active tokens only).
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// Subject.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Session id.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Issuer.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Expiry (seconds since the epoch; for a refresh token, the session's end).
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issue time (seconds since the epoch).
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// An access token's other claims.
    #[serde(flatten)]
    #[schema(ignore)]
    pub claims: Map<String, Value>,
}

impl Introspection {
    /// `{"active": false}`.
    fn inactive() -> Self {
        Introspection {
            active: false,
            token_type: None,
            sub: None,
            sid: None,
            iss: None,
            exp: None,
            iat: None,
            claims: Map::new(),
        }
    }
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
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotForm),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn token(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    token_grant(&app, ip, &headers, &body)
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
    ip: IpAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let (app, headers, body) = (app.clone(), headers.clone(), body.clone());
    let f: TokenForm = form(&headers, &body)?;
    let pair = match f.grant_type.as_deref() {
        Some("password") => {
            let (Some(user), Some(pw)) = (f.username, f.password) else {
                return Err(ApiError::bad_request(
                    "grant_type=password needs username and password",
                ));
            };
            auth::password::grant(&app, &user, pw, &ip.to_string()).await?
        }
        Some("refresh_token") => {
            let rt = f
                .refresh_token
                .ok_or_else(|| ApiError::bad_request("refresh_token is required"))?;
            auth::sessions::refresh(&app, &rt).await?
        }
        Some("client_credentials") => {
            let secret = client_secret(&headers, f.client_secret.as_deref()).ok_or_else(|| {
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
    form_secret: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(t) = super::bearer(headers) {
        if secrets::constant_time_eq(&secrets::hash_token(t), &app.admin_token_hash) {
            return Ok(());
        }
    }
    let key = client_secret(headers, form_secret).or_else(|| {
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
        (status = 401, response = InvalidClient),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotForm),
        (status = 503, response = Unavailable),
    )
)]
async fn introspect(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Introspection>, ApiError> {
    let f: IntrospectForm = form(&headers, &body)?;
    require_client(&app, &headers, f.client_secret.as_deref()).await?;
    let token = f
        .token
        .ok_or_else(|| ApiError::bad_request("token is required"))?;
    let answer = match auth::sessions::introspect(&app, &token).await? {
        Found::Inactive => Introspection::inactive(),
        Found::Access(claims) => {
            let mut claims = match claims {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            // The answer's own members win over claims of the same name.
            claims.insert("active".into(), Value::Bool(true));
            claims.insert("token_type".into(), "access_token".into());
            // The registered claims of this issuer's tokens have the types declared above.
            serde_json::from_value(Value::Object(claims)).map_err(|e| {
                tracing::error!("introspection of a verified token: {e}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the request could not be completed",
                )
            })?
        }
        Found::Refresh {
            session: s,
            issued_at,
        } => Introspection {
            active: true,
            token_type: Some("refresh_token".into()),
            sub: Some(s.user_id),
            sid: Some(s.id),
            iss: Some(app.cfg.issuer.clone()),
            exp: Some(s.expires_at),
            iat: Some(issued_at),
            claims: Map::new(),
        },
    };
    Ok(Json(answer))
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
        (status = 401, response = InvalidClient),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotForm),
        (status = 503, response = Unavailable),
    )
)]
async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let f: RevokeForm = form(&headers, &body)?;
    require_client(&app, &headers, f.client_secret.as_deref()).await?;
    let token = f
        .token
        .ok_or_else(|| ApiError::bad_request("token is required"))?;
    auth::sessions::revoke_token(&app, &token).await?;
    // RFC 7009 §2.2: unknown tokens are answered with 200 as well.
    Ok(StatusCode::OK)
}
