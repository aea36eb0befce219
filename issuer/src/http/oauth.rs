//! OAuth 2.0 endpoints for clients that speak the standard: `/oauth/token` (RFC 6749 grants
//! `password`, `refresh_token`, `client_credentials`), `/oauth/introspect` (RFC 7662) and
//! `/oauth/revoke` (RFC 7009).
//!
//! Clients (the first-party public client, API keys as confidential clients) and the rules
//! of these endpoints live in [`crate::auth::clients`]; this module reads the requests and
//! writes the answers. Each form body is read into its `*Form` type, the same type the
//! OpenAPI document ([`super::openapi`]) describes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
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
use crate::auth::clients::{self, AuthHeader, Credentials, Grant};
use crate::auth::sessions::Introspection as Found;
use crate::auth::TokenPair;
use crate::config::DEFAULT_PASSWORD_MAX;

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

/// The client credentials of a request: its `Authorization` header (Basic, `ApiKey`, or
/// the admin token as `Bearer`) and the form's `client_id` / `client_secret`; what they are
/// worth is decided by [`clients`].
fn credentials(
    headers: &HeaderMap,
    ip: IpAddr,
    client_id: Option<String>,
    client_secret: Option<String>,
) -> Credentials {
    let header = if headers.get(header::AUTHORIZATION).is_none() {
        AuthHeader::Absent
    } else if let Some((client_id, secret)) = super::basic_credentials(headers) {
        // RFC 6749 §2.3.1 form-encodes both before Basic; client ids and API keys are
        // unreserved characters only, which that encoding leaves as they are, so reading
        // them raw also accepts clients that skip it (authlib does).
        AuthHeader::Basic { client_id, secret }
    } else if let Some(key) = super::api_key_header(headers) {
        AuthHeader::ApiKey(key)
    } else if let Some(token) = super::bearer(headers) {
        AuthHeader::Bearer(token.to_string())
    } else {
        AuthHeader::Unusable
    };
    Credentials {
        header,
        client_id,
        client_secret,
        ip: ip.to_string(),
    }
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
    /// The client: the first-party client's id (`none`), or an API key's id with
    /// `client_secret` (`client_secret_post`).
    pub client_id: Option<String>,
    /// An API key (`client_secret_post`), unless sent with HTTP Basic.
    pub client_secret: Option<String>,
}

impl utoipa::PartialSchema for TokenForm {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        token_form_schema()
    }
}

impl ToSchema for TokenForm {}

/// Description of the form's `client_id` (token, introspection and revocation forms).
const CLIENT_ID_DOC: &str =
    "The client: the first-party client's id (`oauth.first_party_client_id`, \
     no secret), or an API key's id. Optional with HTTP Basic, where it must repeat the Basic \
     client id.";

/// Description of the form's `client_secret`.
const CLIENT_SECRET_DOC: &str =
    "An API key, the secret of the client whose id it is (`client_secret_post`); not together \
     with an `Authorization` header.";

/// One object per grant (`oneOf`, told apart by `grant_type`), each requiring what that
/// grant needs: the handler answers 400 `invalid_request` without it.
fn token_form_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let client = serde_json::json!({
        "client_id": {"type": "string", "description": CLIENT_ID_DOC},
        "client_secret": {"type": "string", "description": CLIENT_SECRET_DOC},
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
            }), "RFC 6749 §4.3: a login and its password, for the first-party client."),
            grant("refresh_token", &["refresh_token"], serde_json::json!({
                "refresh_token": {"type": "string", "description": "The refresh token to rotate."},
            }), "RFC 6749 §6: rotates a refresh token (of the authenticated client's session, when a client authenticates)."),
            grant("client_credentials", &[], serde_json::json!({}),
                  "RFC 6749 §4.4: an API key's login, the key authenticating as its client (HTTP Basic or `client_secret`)."),
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
    /// The calling client's id: an API key's id (optional with HTTP Basic, where it must
    /// repeat the Basic client id).
    #[schema(nullable = false)]
    pub client_id: Option<String>,
    /// The caller's API key (`client_secret_post`), unless sent with HTTP Basic,
    /// `Authorization: ApiKey`, or the admin token is used.
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
    /// The calling client's id: the first-party client's id alone (`none`), or an API key's
    /// id (optional with HTTP Basic, where it must repeat the Basic client id).
    #[schema(nullable = false)]
    pub client_id: Option<String>,
    /// The caller's API key (`client_secret_post`), unless sent with HTTP Basic,
    /// `Authorization: ApiKey`, or the admin token is used.
    #[schema(nullable = false)]
    pub client_secret: Option<String>,
}

/// The introspection answer (RFC 7662 §2.2). Inactive or unknown tokens, and tokens the
/// caller may not see, answer only `{"active": false}`. An active access token answers all
/// its claims (also `aud`, `scope`, `roles`, `amr`, `jti`, ... and custom ones) plus `active`
/// and `token_type: "Bearer"`; an active refresh token answers `active`, `client_id`, `sub`,
/// `sid`, `iss`, `exp` and `iat`, without `token_type` (it is not an access token).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Introspection {
    /// Whether the token is valid, its session alive, and the caller may see it.
    pub active: bool,
    /// `Bearer`, the OAuth type of an access token (RFC 6749 §7.1); absent for a refresh
    /// token.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// The client the token was issued to.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
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
            client_id: None,
            sub: None,
            sid: None,
            iss: None,
            exp: None,
            iat: None,
            claims: Map::new(),
        }
    }

    /// The answer for what introspection found.
    fn of(app: &App, found: Found) -> Result<Self, ApiError> {
        Ok(match found {
            Found::Inactive => Introspection::inactive(),
            Found::Access { claims, session } => {
                let mut claims = match claims {
                    Value::Object(map) => map,
                    _ => Map::new(),
                };
                // The answer's own members win over claims of the same name; the session
                // names the client also for tokens minted before they carried `client_id`.
                claims.insert("active".into(), Value::Bool(true));
                claims.insert("token_type".into(), "Bearer".into());
                claims.insert(
                    "client_id".into(),
                    crate::tokens::client_id_of(app, &session).into(),
                );
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
            Found::Refresh { session, issued_at } => Introspection {
                active: true,
                token_type: None,
                client_id: Some(crate::tokens::client_id_of(app, &session).to_string()),
                sub: Some(session.user_id),
                sid: Some(session.id),
                iss: Some(app.cfg.issuer.clone()),
                exp: Some(session.expires_at),
                iat: Some(issued_at),
                claims: Map::new(),
            },
        })
    }
}

/// OAuth 2.0 token endpoint: `password`, `refresh_token` and `client_credentials` grants.
///
/// Client authentication (RFC 6749 §2.3): `client_secret_basic` (HTTP Basic with an API
/// key's id and the key, or the first-party client's id and an empty secret),
/// `client_secret_post` (`client_id` and `client_secret` in the form), or `none` (the
/// first-party client's `client_id` alone). Credentials that are presented must be valid
/// whatever the grant. `password` is for the first-party client (the default when no client
/// authenticates); `client_credentials` for an API key; `refresh_token` for the client that
/// owns the session (or without client authentication).
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
        (status = 400, description = "Malformed or repeated parameters, missing parameters (`invalid_request`), unknown grant (`unsupported_grant_type`), a grant this client may not use (`unauthorized_client`), or wrong credentials / a refresh token that is unknown, spent or another client's (`invalid_grant`, RFC 6749 §5.2)", body = ErrorBody),
        (status = 401, response = InvalidClient),
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
    app: &App,
    ip: IpAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let f: TokenForm = form(headers, body)?;
    let grant = match f.grant_type.as_deref() {
        Some("password") => {
            let (Some(username), Some(password)) = (f.username, f.password) else {
                return Err(ApiError::bad_request(
                    "grant_type=password needs username and password",
                ));
            };
            Grant::Password {
                username,
                password,
                ip: ip.to_string(),
            }
        }
        Some("refresh_token") => Grant::RefreshToken(
            f.refresh_token
                .ok_or_else(|| ApiError::bad_request("refresh_token is required"))?,
        ),
        Some("client_credentials") => Grant::ClientCredentials,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be password, refresh_token or client_credentials",
            ))
        }
        None => return Err(ApiError::bad_request("grant_type is required")),
    };
    let creds = credentials(headers, ip, f.client_id, f.client_secret);
    let pair = clients::token(app, &creds, grant).await?;
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

/// Token introspection (RFC 7662) for confidential clients (API keys) and the admin token.
///
/// The admin token and keys with permission `introspect` see every token; other keys see
/// the tokens of their own sessions, and anything else as `{"active": false}`.
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
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn introspect(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Introspection>, ApiError> {
    let f: IntrospectForm = form(&headers, &body)?;
    let creds = credentials(&headers, ip, f.client_id, f.client_secret);
    let found = clients::introspect(&app, &creds, f.token.as_deref()).await?;
    Ok(Json(Introspection::of(&app, found)?))
}

/// Token revocation (RFC 7009): revokes the token's whole session when the caller may.
///
/// A client revokes the tokens of its own sessions (the first-party client by its
/// `client_id` alone); the admin token and keys with permission `revoke` any token.
/// Unknown tokens and other clients' tokens also answer 200, and nothing changes.
#[utoipa::path(
    post,
    path = "/oauth/revoke",
    tag = "oauth",
    request_body(content = RevokeForm, content_type = "application/x-www-form-urlencoded"),
    security(("adminToken" = []), ("apiKey" = []), ("basic" = []), ()),
    responses(
        (status = 200, description = "Revoked, or the token was unknown or another client's (empty body)"),
        (status = 400, description = "Malformed form or missing `token`", body = ErrorBody),
        (status = 401, response = InvalidClient),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotForm),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn revoke(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let f: RevokeForm = form(&headers, &body)?;
    let creds = credentials(&headers, ip, f.client_id, f.client_secret);
    clients::revoke(&app, &creds, f.token.as_deref()).await?;
    Ok(StatusCode::OK)
}
