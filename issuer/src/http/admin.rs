//! The admin API, served on its own listener (loopback by default) and guarded by the admin
//! token: users (the `/admin/users/{id}` client services call), API keys, signing keys,
//! sessions.
//!
//! Every handler carries a `#[utoipa::path]` annotation (tag `admin`, security scheme
//! `adminToken`) and is registered with `routes!` in [`routes`]; [`super::openapi`] merges
//! the documented routes into the admin listener's document (its `/openapi.json`).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::public::UserView;
use super::responses::{
    AdminForbidden, AdminUnauthorized, InvalidRole, MalformedBody, NotJson, PayloadTooLarge,
    Unavailable, UserNotFound,
};
use super::{bearer, json_body, query, ApiError, ErrorBody};
use crate::accounts::{self, AccountChanges, AccountError, NewAccount};
use crate::app::App;
use crate::auth;
use crate::auth::api_key::NewApiKey;
use crate::auth::clients::Permission;
use crate::store::{ApiKey, Session, SigningKey};
use crate::{signing_keys, tokens};

/// The admin routes with their documentation, SMS messages included (the token check,
/// state, fallbacks and layers are added by [`super::admin_app`]).
pub(crate) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(set_roles))
        .routes(routes!(list_sessions, revoke_user_sessions))
        .routes(routes!(revoke_session))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
        .routes(routes!(list_keys))
        .routes(routes!(rotate_keys))
        .merge(super::sms::admin_routes())
}

/// The admin API opens to the admin token, or to an access token of this issuer carrying
/// role `admin` whose session is still active.
pub(super) async fn require_admin(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(req.headers()).unwrap_or_default();
    let denied = || {
        ApiError::unauthorized(
            "invalid_token",
            "the admin API needs the admin token or an access token with role admin",
        )
    };
    if token.is_empty() {
        return Err(denied());
    }
    if !auth::clients::is_admin_token(&app, token) {
        let claims = tokens::verify(&app, token).map_err(|_| denied())?;
        let is_admin = claims
            .get("roles")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|v| v == "admin"));
        let active = auth::sessions::is_alive(&app, tokens::session_id(&claims)).await;
        if !is_admin || !active {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "role admin is required",
            ));
        }
    }
    Ok(next.run(req).await)
}

/// Paging of `GET /admin/users`.

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Page size, 1-1000 (default 100; values outside are clamped).
    #[param(minimum = -9223372036854775808i64, maximum = 9223372036854775807i64)]
    #[serde(default, deserialize_with = "super::optional_integer_text")]
    limit: Option<i64>,
    /// Users to skip (default 0; negative values count as 0).
    #[param(minimum = -9223372036854775808i64, maximum = 9223372036854775807i64)]
    #[serde(default, deserialize_with = "super::optional_integer_text")]
    offset: Option<i64>,
}

/// `GET /admin/users`: a page of users.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct UserList {
    /// A page of users, oldest first.
    pub users: Vec<UserView>,
}

/// A session as the admin API shows it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Session id (the `sid` claim).
    pub id: String,
    /// The subject it belongs to.
    pub user_id: String,
    /// Authentication methods of the login (`pwd`, `sms`, `key`, `anon`).
    pub amr: Vec<String>,
    /// The OAuth client that opened it: an API key's id, or `null` for the first-party client
    /// (`oauth.first_party_client_id`); the `client_id` claim of its tokens.
    #[schema(required = true)]
    pub client_id: Option<String>,
    /// Login time (seconds since the epoch).
    pub created_at: i64,
    /// Last refresh.
    pub last_used_at: i64,
    /// Absolute end of the session.
    pub expires_at: i64,
    /// When it was revoked.
    #[schema(required = true)]
    pub revoked_at: Option<i64>,
    /// Why it was revoked (`logout`, `admin`, `disabled`, `revoked`, reuse detection).
    #[schema(required = true)]
    pub revoked_reason: Option<String>,
}

/// `GET /admin/users/{id}/sessions`: a user's sessions.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    /// The user's sessions, revoked ones included.
    pub sessions: Vec<SessionView>,
}

/// An API key as the admin API lists it (never the secret or its hash).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    /// Id, used to revoke it.
    pub id: String,
    /// Public lookup part of the key.
    pub prefix: String,
    /// The `sub` of tokens issued for this key.
    pub subject: String,
    /// Human-readable label.
    pub name: String,
    /// Scopes granted to its tokens.
    pub scopes: Vec<String>,
    /// Roles granted to its tokens.
    pub roles: Vec<String>,
    /// What it may do beyond logging in: `introspect`, `revoke` (any token, not only its
    /// own).
    pub permissions: Vec<String>,
    /// Expiry (seconds since the epoch).
    #[schema(required = true)]
    pub expires_at: Option<i64>,
    /// When it was revoked.
    #[schema(required = true)]
    pub revoked_at: Option<i64>,
    /// Last successful login with it.
    #[schema(required = true)]
    pub last_used_at: Option<i64>,
    /// Creation time.
    pub created_at: i64,
}

/// `POST /admin/api-keys`: the new key, with its secret shown this once.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    /// The secret API key (`pk_...`): it is not stored and cannot be shown again.
    pub api_key: String,
    /// The key as listed (`revoked_at` and `last_used_at` are null for a new key).
    #[serde(flatten)]
    pub key: ApiKeyView,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        ApiKeyView {
            id: k.id,
            prefix: k.prefix,
            subject: k.subject,
            name: k.name,
            scopes: k.scopes,
            roles: k.roles,
            permissions: k.permissions,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
            created_at: k.created_at,
        }
    }
}

impl From<Session> for SessionView {
    fn from(s: Session) -> Self {
        SessionView {
            id: s.id,
            user_id: s.user_id,
            amr: s.amr,
            client_id: s.client_id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            revoked_at: s.revoked_at,
            revoked_reason: s.revoked_reason,
        }
    }
}

impl From<SigningKey> for SigningKeyView {
    fn from(k: SigningKey) -> Self {
        SigningKeyView {
            kid: k.kid,
            alg: k.alg,
            state: k.state,
            created_at: k.created_at,
            activates_at: k.activates_at,
            retired_at: k.retired_at,
            remove_after: k.remove_after,
        }
    }
}

/// `GET /admin/api-keys`: the API keys.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    /// The keys, revoked and expired ones included.
    pub api_keys: Vec<ApiKeyView>,
}

/// A signing key (public facts only).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SigningKeyView {
    /// Key id (RFC 7638 thumbprint), the JWT `kid`.
    pub kid: String,
    /// `ES256`, `RS256` or `EdDSA`.
    pub alg: String,
    /// `next` (published, not signing yet), `active` (signing) or `retired`.
    pub state: String,
    /// Creation time (seconds since the epoch).
    pub created_at: i64,
    /// When it may start signing.
    pub activates_at: i64,
    /// When it stopped signing.
    #[schema(required = true)]
    pub retired_at: Option<i64>,
    /// When it leaves the JWKS.
    #[schema(required = true)]
    pub remove_after: Option<i64>,
}

/// `GET /admin/keys`: the signing keys.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SigningKeyList {
    /// Every stored signing key.
    pub keys: Vec<SigningKeyView>,
}

/// `POST /admin/keys/rotate`: the new key.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RotatedKey {
    /// The new key's id.
    pub kid: String,
    /// Always `next`: published now, signing later.
    #[schema(example = "next")]
    pub state: String,
    /// Seconds until it starts signing (the publish lead time).
    pub activates_in: u64,
}

/// Lists users, a page at a time.
#[utoipa::path(
    get,
    path = "/admin/users",
    tag = "admin",
    params(Page),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "A page of users", body = UserList),
        (status = 400, description = "Bad query string (`limit` or `offset` not a 64-bit integer)", body = ErrorBody),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 503, response = Unavailable),
    )
)]
async fn list_users(
    State(app): State<Arc<App>>,
    RawQuery(q): RawQuery,
) -> Result<Json<UserList>, ApiError> {
    let p: Page = query(q)?;
    let users = accounts::list(
        &app,
        p.limit.unwrap_or(100).clamp(1, 1000),
        p.offset.unwrap_or(0).max(0),
    )
    .await?;
    Ok(Json(UserList {
        users: users.into_iter().map(UserView::from).collect(),
    }))
}

/// A new user: `email` or `username` (or both).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    /// Email address (lower-cased; unique).
    #[schema(nullable = false, format = Email, max_length = 254, pattern = r"^[^@\s]+@\S*\.")]
    email: Option<String>,
    /// Username (lower-cased; unique).
    #[schema(nullable = false)]
    username: Option<String>,
    /// Password, checked against the policy; without one the account cannot log in with a
    /// password.
    password: Option<String>,
    /// Roles (default none).
    #[serde(default)]
    roles: Vec<String>,
    /// Metadata only administrators change; its keys become extra token claims (an object).
    #[schema(value_type = Option<Object>)]
    app_metadata: Option<Value>,
    /// Metadata the user may change (an object).
    #[schema(value_type = Option<Object>)]
    user_metadata: Option<Value>,
}

/// Creates a user.
#[utoipa::path(
    post,
    path = "/admin/users",
    tag = "admin",
    request_body(content = CreateUser, content_type = "application/json"),
    security(("adminToken" = [])),
    responses(
        (status = 201, description = "The new user", body = UserView),
        (status = 400, description = "Malformed body, neither `email` nor `username`, or metadata not an object", body = ErrorBody),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 409, description = "The email or username is taken (`conflict`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 422, description = "The password does not meet the policy (`weak_password`), or a role is invalid (`invalid_role`)", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
async fn create_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let b: CreateUser = json_body(&headers, &body)?;
    let new = NewAccount {
        email: b.email,
        username: b.username,
        password: b.password,
        roles: b.roles,
        app_metadata: b.app_metadata,
        user_metadata: b.user_metadata,
    };
    let user = accounts::create(&app, new).await.map_err(|e| match e {
        // The admin API has always answered a weak password without saying why.
        AccountError::WeakPassword(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            "the password does not meet the policy",
        ),
        e => e.into(),
    })?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// One user: what client services call to look a subject up.
#[utoipa::path(
    get,
    path = "/admin/users/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 404, response = UserNotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn get_user(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(accounts::get(&app, &id).await?.into()))
}

/// Changes to a user; absent fields are left alone.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateUser {
    /// New email address.
    #[schema(format = Email, max_length = 254, pattern = r"^[^@\s]+@\S*\.")]
    email: Option<String>,
    /// New username.
    username: Option<String>,
    /// Replaces the roles.
    roles: Option<Vec<String>>,
    /// Replaces the admin-only metadata.
    #[schema(value_type = Option<Object>)]
    app_metadata: Option<Value>,
    /// Replaces the user metadata.
    #[schema(value_type = Option<Object>)]
    user_metadata: Option<Value>,
    /// Disables (revoking every session) or re-enables the account.
    disabled: Option<bool>,
}

/// Updates a user.
#[utoipa::path(
    patch,
    path = "/admin/users/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    request_body(content = UpdateUser, content_type = "application/json"),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The updated user", body = UserView),
        (status = 400, response = MalformedBody),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 404, response = UserNotFound),
        (status = 409, description = "The email or username is taken (`conflict`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 422, response = InvalidRole),
        (status = 503, response = Unavailable),
    )
)]
async fn update_user(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<UserView>, ApiError> {
    let b: UpdateUser = json_body(&headers, &body)?;
    let changes = AccountChanges {
        email: b.email,
        username: b.username,
        roles: b.roles,
        app_metadata: b.app_metadata,
        user_metadata: b.user_metadata,
        disabled: b.disabled,
    };
    Ok(Json(accounts::update(&app, &id, changes).await?.into()))
}

/// Replaces a user's roles.
#[utoipa::path(
    put,
    path = "/admin/users/{id}/roles",
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    request_body(content = Vec<String>, content_type = "application/json"),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The updated user", body = UserView),
        (status = 400, description = "Malformed body (not an array of strings)", body = ErrorBody),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 404, response = UserNotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 422, response = InvalidRole),
        (status = 503, response = Unavailable),
    )
)]
async fn set_roles(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<UserView>, ApiError> {
    let roles: Vec<String> = json_body(&headers, &body)?;
    Ok(Json(accounts::set_roles(&app, &id, roles).await?.into()))
}

/// Deletes a user with its sessions, refresh tokens and the API keys bound to it.
#[utoipa::path(
    delete,
    path = "/admin/users/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    security(("adminToken" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 404, response = UserNotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn delete_user(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    accounts::delete(&app, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a user's sessions.
#[utoipa::path(
    get,
    path = "/admin/users/{id}/sessions",
    tag = "admin",
    params(("id" = String, Path, description = "User id (or machine subject)")),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The sessions (empty for an unknown user)", body = SessionList),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 503, response = Unavailable),
    )
)]
async fn list_sessions(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<SessionList>, ApiError> {
    let sessions = auth::sessions::list(&app, &id).await?;
    Ok(Json(SessionList {
        sessions: sessions.into_iter().map(SessionView::from).collect(),
    }))
}

/// Revokes every session of a user (its refresh tokens stop working) and ends the access
/// tokens already issued (a subject record in the revocation feed).
#[utoipa::path(
    delete,
    path = "/admin/users/{id}/sessions",
    tag = "admin",
    params(("id" = String, Path, description = "User id (or machine subject)")),
    security(("adminToken" = [])),
    responses(
        (status = 204, description = "Revoked (also when there were none)"),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 503, response = Unavailable),
    )
)]
async fn revoke_user_sessions(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth::sessions::revoke_all(&app, &id, "admin").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes one session.
#[utoipa::path(
    delete,
    path = "/admin/sessions/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "Session id (the `sid` claim)")),
    security(("adminToken" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 404, description = "No such session (`not_found`)", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
async fn revoke_session(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth::sessions::revoke(&app, &id, "admin").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new API key, bound to a subject.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateApiKey {
    /// The `sub` of its tokens: a user id or a machine principal (1-200 characters, not
    /// blank).
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    subject: String,
    /// Human-readable label.
    name: Option<String>,
    /// Scopes granted to its tokens.
    #[serde(default)]
    scopes: Vec<String>,
    /// Roles granted to its tokens.
    #[serde(default)]
    roles: Vec<String>,
    /// What it may do beyond logging in as its own OAuth client: `introspect` and `revoke`
    /// any token at `/oauth/introspect` and `/oauth/revoke` (without them, only the tokens
    /// of its own sessions).
    #[serde(default)]
    permissions: Vec<Permission>,
    /// Lifetime in seconds (None: no expiry).
    #[serde(default, deserialize_with = "super::optional_integer")]
    #[schema(minimum = -9223372036854775808i64, maximum = 9223372036854775807i64)]
    expires_in: Option<i64>,
}

/// Creates an API key; the secret is in the answer and nowhere else, ever.
#[utoipa::path(
    post,
    path = "/admin/api-keys",
    tag = "admin",
    request_body(content = CreateApiKey, content_type = "application/json"),
    security(("adminToken" = [])),
    responses(
        (status = 201, description = "The key and its secret", body = CreatedApiKey),
        (status = 400, description = "Malformed body or bad `subject`", body = ErrorBody),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 422, response = InvalidRole),
        (status = 503, response = Unavailable),
    )
)]
async fn create_api_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let b: CreateApiKey = json_body(&headers, &body)?;
    let new = NewApiKey {
        subject: &b.subject,
        name: b.name.as_deref().unwrap_or(""),
        scopes: b.scopes,
        roles: b.roles,
        permissions: b.permissions,
        expires_in: b.expires_in,
    };
    let (key, secret) = auth::api_key::create(&app, new).await?;
    let created = CreatedApiKey {
        api_key: secret,
        key: key.into(),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Filter of `GET /admin/api-keys`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct KeyFilter {
    /// Only the keys bound to this subject.
    subject: Option<String>,
}

/// Lists API keys (never their secrets).
#[utoipa::path(
    get,
    path = "/admin/api-keys",
    tag = "admin",
    params(KeyFilter),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The keys", body = ApiKeyList),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 503, response = Unavailable),
    )
)]
async fn list_api_keys(
    State(app): State<Arc<App>>,
    RawQuery(q): RawQuery,
) -> Result<Json<ApiKeyList>, ApiError> {
    let f: KeyFilter = query(q)?;
    let keys = auth::api_key::list(&app, f.subject.as_deref()).await?;
    Ok(Json(ApiKeyList {
        api_keys: keys.into_iter().map(ApiKeyView::from).collect(),
    }))
}

/// Revokes an API key and the live sessions it opened (their access tokens enter the
/// revocation feed).
#[utoipa::path(
    delete,
    path = "/admin/api-keys/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "API key id")),
    security(("adminToken" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 404, description = "No such API key (`not_found`)", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
async fn revoke_api_key(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth::api_key::revoke(&app, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists signing keys and their states.
#[utoipa::path(
    get,
    path = "/admin/keys",
    tag = "admin",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The signing keys", body = SigningKeyList),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 503, response = Unavailable),
    )
)]
async fn list_keys(State(app): State<Arc<App>>) -> Result<Json<SigningKeyList>, ApiError> {
    let keys = signing_keys::list(&app.store).await?;
    Ok(Json(SigningKeyList {
        keys: keys.into_iter().map(SigningKeyView::from).collect(),
    }))
}

/// Publishes a new signing key; it starts signing after the publish lead time.
#[utoipa::path(
    post,
    path = "/admin/keys/rotate",
    tag = "admin",
    security(("adminToken" = [])),
    responses(
        (status = 202, description = "The new key, published but not signing yet", body = RotatedKey),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 503, description = "The database is unavailable or rotation failed", body = ErrorBody),
    )
)]
async fn rotate_keys(
    State(app): State<Arc<App>>,
) -> Result<(StatusCode, Json<RotatedKey>), ApiError> {
    let kid = app.keys.rotate(&app.store).await?;
    let rotated = RotatedKey {
        kid,
        state: "next".into(),
        activates_in: app.cfg.key_publish_lead.as_secs(),
    };
    Ok((StatusCode::ACCEPTED, Json(rotated)))
}
