//! The public API: logins, refresh, logout, sign-up, the caller's profile, JWKS, discovery.
//!
//! Every handler carries a `#[utoipa::path]` annotation and is registered with `routes!` in
//! [`routes`], which yields its route and its documentation together.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{
    InvalidToken, MalformedBody, NotJson, PayloadTooLarge, TooManyRequests, Unavailable,
};
use super::{bearer, json_body, ApiError, ClientIp, ErrorBody};
use crate::app::App;
use crate::auth::password::{SignUp, SignedUp};
use crate::auth::{self, profile::ProfileChanges, sessions::LogoutBy, TokenPair};
use crate::store::User;

/// The public routes with their documentation, those of the email flows, SMS login and the
/// OAuth endpoints included (state, fallbacks and layers are added by [`super::public_app`]).
pub(crate) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(jwks))
        .routes(routes!(openid_configuration))
        .routes(routes!(authorization_server_metadata))
        .routes(routes!(password_login))
        .routes(routes!(api_key_login))
        .routes(routes!(anonymous_login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(signup))
        .routes(routes!(me, update_me))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(super::openapi::openapi_json))
        .merge(super::email::routes())
        .merge(super::sms::public_routes())
        .merge(super::oauth::routes())
        .merge(super::revocations::routes())
}

// The handler serves the key ring's cached serialization (its ETag is computed over those
// bytes); this type names the shape for the document and for clients.
/// The JWKS document (RFC 7517): public keys only.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct JwksDocument {
    /// Public JWKs: every key that signs, will sign, or signed a token that has not expired.
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<Value>,
}

/// Authorization server metadata (RFC 8414), also served as the OpenID Connect discovery
/// document: exactly what this issuer implements. It has no authorization endpoint (no
/// browser flows) and issues no ID tokens, so `response_types_supported` is empty and no
/// ID-token member is present; scopes are whatever API keys grant, so none are listed.
/// Endpoints are URLs under `issuer`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ServerMetadata {
    /// The `iss` of every token.
    pub issuer: String,
    /// The OAuth token endpoint (`/oauth/token`).
    pub token_endpoint: String,
    /// Where the JWKS is published.
    pub jwks_uri: String,
    /// Token introspection, RFC 7662 (`/oauth/introspect`).
    pub introspection_endpoint: String,
    /// Token revocation, RFC 7009 (`/oauth/revoke`).
    pub revocation_endpoint: String,
    /// `password`, `refresh_token`, `client_credentials`.
    pub grant_types_supported: Vec<String>,
    /// `client_secret_basic`, `client_secret_post` (API keys), `none` (the first-party
    /// client).
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// `client_secret_basic`, `client_secret_post`: introspection needs a confidential
    /// client (or the admin token).
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    /// `client_secret_basic`, `client_secret_post`, `none`.
    pub revocation_endpoint_auth_methods_supported: Vec<String>,
    /// Empty: there is no authorization endpoint.
    pub response_types_supported: Vec<String>,
    /// Empty, for the same reason (omitted, RFC 8414 would mean `query` and `fragment`).
    pub response_modes_supported: Vec<String>,
    /// Portcullis extension: the revocation feed gateways follow (`/v1/revocations`, feed
    /// token required), so a gateway configured with discovery finds it.
    pub revocation_feed_endpoint: String,
}

impl ServerMetadata {
    /// The metadata of the issuer `iss`.
    fn of(iss: &str) -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        let confidential = ["client_secret_basic", "client_secret_post"];
        let any_client = ["client_secret_basic", "client_secret_post", "none"];
        ServerMetadata {
            issuer: iss.to_string(),
            token_endpoint: format!("{iss}/oauth/token"),
            jwks_uri: format!("{iss}/.well-known/jwks.json"),
            introspection_endpoint: format!("{iss}/oauth/introspect"),
            revocation_endpoint: format!("{iss}/oauth/revoke"),
            grant_types_supported: strings(&["password", "refresh_token", "client_credentials"]),
            token_endpoint_auth_methods_supported: strings(&any_client),
            introspection_endpoint_auth_methods_supported: strings(&confidential),
            revocation_endpoint_auth_methods_supported: strings(&any_client),
            response_types_supported: Vec::new(),
            response_modes_supported: Vec::new(),
            revocation_feed_endpoint: format!("{iss}/v1/revocations"),
        }
    }
}

/// The answer of the health endpoints.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct HealthStatus {
    /// `ok` (`/healthz`), `ready` or `database unavailable` (`/readyz`).
    #[schema(example = "ok")]
    pub status: String,
}

impl HealthStatus {
    fn new(status: &str) -> Self {
        HealthStatus {
            status: status.to_string(),
        }
    }
}

/// Publishes the signing keys.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "keys",
    params(("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "The public signing keys", body = JwksDocument,
         headers(
             ("Cache-Control" = String, description = "`public, max-age=300`"),
             ("ETag" = String, description = "Changes whenever the key set does"),
         )),
        (status = 304, description = "The key set still matches `If-None-Match`",
         headers(
             ("Cache-Control" = String, description = "`public, max-age=300`"),
             ("ETag" = String, description = "The current ETag"),
         )),
    )
)]
async fn jwks(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let view = app.keys.view();
    let cache = [
        (header::CACHE_CONTROL, "public, max-age=300".to_string()),
        (header::ETAG, view.etag.clone()),
    ];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == view.etag));
    if matches {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        StatusCode::OK,
        cache,
        [(header::CONTENT_TYPE, "application/json".to_string())],
        view.jwks.clone(),
    )
        .into_response()
}

/// OpenID Connect discovery: the issuer's metadata (the same document as RFC 8414's).
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "keys",
    responses((status = 200, description = "The issuer's metadata", body = ServerMetadata))
)]
async fn openid_configuration(State(app): State<Arc<App>>) -> Json<ServerMetadata> {
    Json(ServerMetadata::of(&app.cfg.issuer))
}

/// OAuth 2.0 authorization server metadata (RFC 8414).
#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tag = "keys",
    responses((status = 200, description = "The issuer's metadata", body = ServerMetadata))
)]
async fn authorization_server_metadata(State(app): State<Arc<App>>) -> Json<ServerMetadata> {
    Json(ServerMetadata::of(&app.cfg.issuer))
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is up", body = HealthStatus,
               example = json!({"status": "ok"})))
)]
async fn healthz() -> Json<HealthStatus> {
    Json(HealthStatus::new("ok"))
}

/// Readiness: the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = HealthStatus,
         example = json!({"status": "ready"})),
        (status = 503, description = "The database is unavailable", body = HealthStatus,
         example = json!({"status": "database unavailable"})),
    )
)]
async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.store.ping().await {
        Json(HealthStatus::new("ready")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthStatus::new("database unavailable")),
        )
            .into_response()
    }
}

/// Password login: `email` or `username`, and `password`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordLogin {
    /// The account's email address (case-insensitive; not blank).
    #[schema(nullable = false, pattern = r"\S")]
    email: Option<String>,
    /// The account's username (used when `email` is absent; not blank).
    #[schema(nullable = false, pattern = r"\S")]
    username: Option<String>,
    /// The password (at most `password.max_length` characters, 128 by default).
    #[schema(min_length = 1, max_length = 128)]
    password: String,
}

/// Logs in with a login (email or username) and a password.
///
/// Credentials come from HTTP Basic (`login:password`) when present, else from the JSON body.
/// Failures count against per-account and per-IP budgets; an exhausted budget answers 429.
#[utoipa::path(
    post,
    path = "/v1/auth/password",
    tag = "auth",
    request_body(content = Option<PasswordLogin>, content_type = "application/json",
                 description = "Not needed when HTTP Basic credentials are sent"),
    security((), ("basic" = [])),
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 400, description = "Malformed body or missing credentials", body = ErrorBody),
        (status = 401, description = "Wrong login or password (`invalid_grant`)", body = ErrorBody),
        (status = 403, description = "Right password, but the email address is unconfirmed and `email.require_confirmed_email_for_password_login` is on (`email_not_confirmed`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn password_login(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenPair>, ApiError> {
    let (login, pw) = match super::basic_credentials(&headers) {
        Some(c) => c,
        None => {
            let b: PasswordLogin = json_body(&headers, &body)?;
            let login = b.email.or(b.username).ok_or_else(|| {
                ApiError::bad_request("give `email` or `username` with `password`")
            })?;
            (login, b.password)
        }
    };
    Ok(Json(
        auth::password::grant(&app, &login, pw, &ip.to_string()).await?,
    ))
}

/// API-key login.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiKeyLogin {
    /// The API key, as created (`pk_...`).
    api_key: String,
}

/// Exchanges an API key for a token pair bound to the key's subject, scopes and roles.
///
/// The key comes from `Authorization: ApiKey <key>` when present, else from the JSON body.
#[utoipa::path(
    post,
    path = "/v1/auth/api-key",
    tag = "auth",
    request_body(content = Option<ApiKeyLogin>, content_type = "application/json",
                 description = "Not needed when the key is sent as `Authorization: ApiKey <key>`"),
    security((), ("apiKey" = [])),
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 400, response = MalformedBody),
        (status = 401, description = "Unknown, revoked or expired API key (`invalid_client`, challenge `ApiKey`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn api_key_login(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenPair>, ApiError> {
    let key = match super::api_key_header(&headers) {
        Some(k) => k,
        None => json_body::<ApiKeyLogin>(&headers, &body)?.api_key,
    };
    let ip = ip.to_string();
    Ok(Json(auth::api_key::grant(&app, &key, &ip).await?))
}

/// Creates an anonymous user and logs it in (`amr: ["anon"]`).
///
/// Limited per client address and in total (`limits.anonymous`).
#[utoipa::path(
    post,
    path = "/v1/auth/anonymous",
    tag = "auth",
    responses(
        (status = 201, description = "A new anonymous user, logged in", body = TokenPair),
        (status = 403, description = "Anonymous sign-in is disabled (`disabled`)", body = ErrorBody),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn anonymous_login(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
) -> Result<(StatusCode, Json<TokenPair>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(auth::anonymous::sign_in(&app, &ip.to_string()).await?),
    ))
}

/// A refresh token to rotate.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshBody {
    /// The current refresh token of the session.
    refresh_token: String,
}

/// Rotates a refresh token: the answer carries a new pair; the old refresh token is spent.
///
/// Presenting a spent refresh token again (after a short grace period) revokes the session.
/// Failed refreshes count against a budget per client address (`limits.refresh`).
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    request_body(content = RefreshBody, content_type = "application/json"),
    responses(
        (status = 200, description = "A new token pair", body = TokenPair),
        (status = 400, response = MalformedBody),
        (status = 401, description = "Unknown, reused or expired refresh token, or disabled account (`invalid_grant`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn refresh(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenPair>, ApiError> {
    let b: RefreshBody = json_body(&headers, &body)?;
    let ip = ip.to_string();
    Ok(Json(
        auth::sessions::refresh(&app, &b.refresh_token, &ip).await?,
    ))
}

/// Logout by refresh token (when no access token is sent).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LogoutBody {
    /// A refresh token of the session to end.
    refresh_token: Option<String>,
}

/// Ends a session, named by the bearer access token or, without one, by a refresh token.
///
/// An unknown refresh token also answers 204.
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    request_body(content = Option<LogoutBody>, content_type = "application/json",
                 description = "Needed only when no bearer access token is sent"),
    security(("bearer" = []), ()),
    responses(
        (status = 204, description = "The session is revoked (or was unknown)"),
        (status = 400, description = "Neither a bearer token nor `refresh_token`, or a malformed body", body = ErrorBody),
        (status = 401, description = "Invalid or expired access token (`invalid_token`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 503, response = Unavailable),
    )
)]
async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let by = match bearer(&headers) {
        Some(token) => LogoutBy::AccessToken(token),
        None => {
            let b: LogoutBody = json_body(&headers, &body)?;
            let rt = b.refresh_token.ok_or_else(|| {
                ApiError::bad_request("give a bearer access token or `refresh_token`")
            })?;
            auth::sessions::logout(&app, LogoutBy::RefreshToken(&rt)).await?;
            return Ok(StatusCode::NO_CONTENT);
        }
    };
    auth::sessions::logout(&app, by).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sign-up with an email address and a password.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SignupBody {
    /// Email address (lower-cased; must be unique).
    #[schema(format = Email, max_length = 254, pattern = r"^[^@\s]+@\S*\.")]
    email: String,
    /// Password, checked against the length policy and a list of common passwords.
    password: String,
    /// Optional username (lower-cased; must be unique).
    username: Option<String>,
    /// Optional metadata the user may change later (a JSON object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    user_metadata: Option<Value>,
}

/// A sign-up whose address must be confirmed before the first password login.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SignupPending {
    /// The new account's id.
    pub id: String,
    /// Where the confirmation link was sent (lower-cased).
    pub email: String,
    /// Always `true`: no tokens until the link is used and the user logs in.
    pub confirmation_required: bool,
}

/// Creates an account (when sign-up is enabled) and logs it in, or — when
/// `email.require_confirmed_email_for_password_login` is on — answers 202 without tokens.
///
/// With the email flows enabled, a confirmation link is mailed to the address (in the
/// background: a delivery failure does not change the answer). Limited per client address
/// and in total (`limits.signup`).
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "users",
    request_body(content = SignupBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The account is created and logged in", body = TokenPair),
        (status = 202, description = "The account is created; confirmed email is required before a password login, so no tokens: the link was mailed", body = SignupPending),
        (status = 400, description = "Malformed body or invalid email address", body = ErrorBody),
        (status = 403, description = "Sign-up is disabled (`disabled`)", body = ErrorBody),
        (status = 409, description = "The email or username is taken (`conflict`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 422, description = "The password does not meet the policy (`weak_password`)", body = ErrorBody),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn signup(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth::password::signup_enabled(&app)?;
    let b: SignupBody = json_body(&headers, &body)?;
    let outcome = auth::password::sign_up(
        &app,
        SignUp {
            email: b.email,
            password: b.password,
            username: b.username,
            user_metadata: b.user_metadata,
        },
        &ip.to_string(),
    )
    .await?;
    Ok(match outcome {
        SignedUp::LoggedIn(pair) => (StatusCode::CREATED, Json(pair)).into_response(),
        SignedUp::ConfirmationRequired { user_id, email } => (
            StatusCode::ACCEPTED,
            Json(SignupPending {
                id: user_id,
                email,
                confirmation_required: true,
            }),
        )
            .into_response(),
    })
}

/// A user as the API shows it (never the password hash).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// Random id; the `sub` of the user's tokens.
    pub id: String,
    /// Lower-cased email address.
    #[schema(required = true)]
    pub email: Option<String>,
    /// Username.
    #[schema(required = true)]
    pub username: Option<String>,
    /// E.164 phone number.
    #[schema(required = true)]
    pub phone: Option<String>,
    /// Roles copied into the `roles` claim.
    pub roles: Vec<String>,
    /// Metadata only administrators may change; its keys become extra token claims.
    #[schema(value_type = Object)]
    pub app_metadata: Value,
    /// Metadata the user may change.
    #[schema(value_type = Object)]
    pub user_metadata: Value,
    /// Created by an anonymous login.
    pub anonymous: bool,
    /// When the email address was confirmed (seconds since the epoch).
    #[schema(required = true)]
    pub email_confirmed_at: Option<i64>,
    /// A disabled account cannot log in or refresh.
    pub disabled: bool,
    /// Creation time (seconds since the epoch).
    pub created_at: i64,
    /// Last change (seconds since the epoch).
    pub updated_at: i64,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            email: u.email,
            username: u.username,
            phone: u.phone,
            roles: u.roles,
            app_metadata: u.app_metadata,
            user_metadata: u.user_metadata,
            anonymous: u.anonymous,
            email_confirmed_at: u.email_confirmed_at,
            disabled: u.disabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// The caller's account.
#[utoipa::path(
    get,
    path = "/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = UserView),
        (status = 401, response = InvalidToken),
        (status = 503, response = Unavailable),
    )
)]
async fn me(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<UserView>, ApiError> {
    let (user, _) = auth::sessions::caller(&app, bearer(&headers)).await?;
    Ok(Json(user.into()))
}

/// Changes to the caller's account; absent fields are left alone.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateMe {
    /// New email address (unconfirmed; with the email flows on, an existing address is
    /// replaced only once the link mailed to the new one is used).
    #[schema(format = Email, max_length = 254, pattern = r"^[^@\s]+@\S*\.")]
    email: Option<String>,
    /// New password, checked against the policy.
    password: Option<String>,
    /// The current password; required with `password` when the account has one (the
    /// document requires it with `password` always).
    #[schema(nullable = false)]
    old_password: Option<String>,
    /// Replaces the user metadata (a JSON object).
    #[schema(value_type = Option<Object>)]
    user_metadata: Option<Value>,
}

/// Updates the caller's email, password or user metadata.
///
/// With the email flows enabled, a new address replaces an existing one only once confirmed:
/// a link is mailed to the new address and the answer still shows the old one until
/// `POST /v1/users/confirm` is called with its token. A first address is set at once,
/// unconfirmed, and a confirmation link is mailed to it.
///
/// An anonymous user that gains an email and a password becomes a regular account with the
/// same id.
#[utoipa::path(
    patch,
    path = "/v1/users/me",
    tag = "users",
    request_body(content = UpdateMe, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated account", body = UserView),
        (status = 400, description = "Malformed body, invalid email, missing `old_password`, or metadata not an object", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked access token (`invalid_token`), or wrong `old_password` (`invalid_grant`)", body = ErrorBody),
        (status = 409, description = "The email is taken (`conflict`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 422, description = "The new password does not meet the policy (`weak_password`)", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
async fn update_me(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<UserView>, ApiError> {
    let (user, _) = auth::sessions::caller(&app, bearer(&headers)).await?;
    let b: UpdateMe = json_body(&headers, &body)?;
    let changes = ProfileChanges {
        email: b.email,
        password: b.password,
        old_password: b.old_password,
        user_metadata: b.user_metadata,
    };
    let user = auth::profile::update(&app, user, changes).await?;
    Ok(Json(user.into()))
}
