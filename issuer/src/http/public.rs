//! The public API: logins, refresh, logout, sign-up, the caller's profile, JWKS, discovery.
//!
//! Every handler carries a `#[utoipa::path]` annotation; [`super::openapi`] collects them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{bearer, json_body, ApiError, ErrorBody};
use crate::app::{now, App, TokenPair};
use crate::crypto::{password, secrets};
use crate::mail::MailKind;
use crate::store::{NewUser, RotateOutcome, Session, User};

/// The public router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/v1/auth/password", post(password_login))
        .route("/v1/auth/api-key", post(api_key_login))
        .route("/v1/auth/anonymous", post(anonymous_login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/users", post(signup))
        .route("/v1/users/confirm", post(super::email::confirm))
        .route("/v1/users/confirm/resend", post(super::email::resend))
        .route("/v1/password/forgot", post(super::email::forgot))
        .route("/v1/password/reset", post(super::email::reset))
        .route("/v1/users/me", get(me).patch(update_me))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(super::openapi::openapi_json))
        .fallback(super::not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
        .with_state(app.clone())
        .merge(super::sms::public_router(app.clone()))
        .merge(super::oauth::router(app))
}

// Schema for the OpenAPI document only; the handler writes the JSON itself.
/// The JWKS document (RFC 7517): public keys only.
#[derive(ToSchema)]
pub struct JwksDocument {
    /// Public JWKs: every key that signs, will sign, or signed a token that has not expired.
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<Value>,
}

// Schema for the OpenAPI document only; the handler writes the JSON itself.
/// The discovery document (a subset of OpenID Connect Discovery / RFC 8414).
#[derive(ToSchema)]
pub struct DiscoveryDocument {
    /// The `iss` of every token.
    pub issuer: String,
    /// Where the JWKS is published.
    pub jwks_uri: String,
    /// The OAuth token endpoint.
    pub token_endpoint: String,
    /// `password`, `refresh_token`, `client_credentials`.
    pub grant_types_supported: Vec<String>,
    /// `client_secret_basic`, `client_secret_post`.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// The configured signing algorithm (`ES256`, `RS256` or `EdDSA`).
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// `token`.
    pub response_types_supported: Vec<String>,
    /// `public`.
    pub subject_types_supported: Vec<String>,
}

// Schema for the OpenAPI document only; the handler writes the JSON itself.
/// The answer of the health endpoints.
#[derive(ToSchema)]
pub struct HealthStatus {
    /// `ok` (`/healthz`), `ready` or `database unavailable` (`/readyz`).
    #[schema(example = "ok")]
    pub status: String,
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

/// Issuer metadata for OAuth / OpenID Connect clients.
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "keys",
    responses((status = 200, description = "The discovery document", body = DiscoveryDocument))
)]
async fn discovery(State(app): State<Arc<App>>) -> Json<Value> {
    let iss = &app.cfg.issuer;
    Json(json!({
        "issuer": iss,
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "token_endpoint": format!("{iss}/oauth/token"),
        "grant_types_supported": ["password", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": [app.cfg.key_alg],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }))
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is up", body = HealthStatus,
               example = json!({"status": "ok"})))
)]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
               content_type = "text/plain; version=0.0.4"))
)]
async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
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
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "database unavailable"})),
        )
            .into_response()
    }
}

/// The client address: the gateway's `X-Real-IP` when the peer is local, else the peer.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap) -> String {
    if peer.ip().is_loopback() {
        if let Some(ip) = headers.get("x-real-ip").and_then(|v| v.to_str().ok()) {
            return ip.to_string();
        }
    }
    peer.ip().to_string()
}

/// Password login: `email` or `username`, and `password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordLogin {
    /// The account's email address (case-insensitive).
    email: Option<String>,
    /// The account's username (used when `email` is absent).
    username: Option<String>,
    /// The password.
    password: String,
}

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

/// Runs argon2 off the async runtime, at most `max_concurrent_hashes` at a time.
pub(super) async fn with_hash_slot<T: Send + 'static>(
    app: &App,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = app.hash_slots.acquire().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "shutting down",
        )
    })?;
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the request could not be completed",
        )
    })
}

/// Checks both failure budgets; returns `Retry-After` seconds when one is exhausted.
async fn locked_out(app: &App, account_key: &str, ip_key: &str) -> Result<Option<i64>, ApiError> {
    let window = app.cfg.failure_window.as_secs() as i64;
    let t = now();
    let acct = app.store.peek_limit(account_key, window, t).await?;
    let ip = app.store.peek_limit(ip_key, window, t).await?;
    if acct >= app.cfg.max_failures_per_account || ip >= app.cfg.max_failures_per_ip {
        return Ok(Some(window - t.rem_euclid(window)));
    }
    Ok(None)
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
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body sent without `Content-Type: application/json`", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody,
         headers(("Retry-After" = i64, description = "Seconds until the budget resets"))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn password_login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenPair>, ApiError> {
    let (login, pw) = match basic_credentials(&headers) {
        Some(c) => c,
        None => {
            let b: PasswordLogin = json_body(&headers, &body)?;
            let login = b.email.or(b.username).ok_or_else(|| {
                ApiError::bad_request("give `email` or `username` with `password`")
            })?;
            (login, b.password)
        }
    };
    let ip = client_ip(peer, &headers);
    Ok(Json(password_grant(&app, &login, pw, &ip).await?))
}

/// Checks a login and password (with lock-out and constant-time behaviour for unknown
/// users) and starts a session.
pub async fn password_grant(
    app: &App,
    login: &str,
    pw: String,
    ip: &str,
) -> Result<TokenPair, ApiError> {
    let login = login.trim().to_lowercase();
    if login.is_empty() || pw.is_empty() || pw.chars().count() > app.cfg.password_max {
        return Err(ApiError::bad_request("missing or oversized credentials"));
    }
    let account_key = format!("pwfail:acct:{login}");
    let ip_key = format!("pwfail:ip:{ip}");
    if let Some(retry) = locked_out(app, &account_key, &ip_key).await? {
        return Err(ApiError::too_many(retry));
    }
    let user = match app.store.find_user_by_email(&login).await? {
        Some(u) => Some(u),
        None => app.store.find_user_by_username(&login).await?,
    };
    let params = app.password;
    let stored = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .filter(|_| user.as_ref().is_some_and(|u| !u.disabled));
    let pw_for_check = pw.clone();
    let ok = with_hash_slot(app, move || match stored {
        Some(phc) => password::verify(&pw_for_check, &phc),
        None => {
            // Same work for unknown users, so timing does not reveal which accounts exist.
            password::dummy_verify(&pw_for_check, &params);
            false
        }
    })
    .await?;
    app.metrics
        .logins
        .with_label_values(&["pwd", if ok { "ok" } else { "denied" }])
        .inc();
    let Some(mut user) = user.filter(|_| ok) else {
        let window = app.cfg.failure_window.as_secs() as i64;
        app.store.hit_limit(&account_key, window, now()).await?;
        app.store.hit_limit(&ip_key, window, now()).await?;
        return Err(ApiError::unauthorized(
            "invalid_grant",
            "wrong email, username or password",
        ));
    };
    app.store.reset_limit(&account_key).await?;
    let email_cfg = &app.cfg.email;
    if email_cfg.enabled
        && email_cfg.require_confirmed
        && user.email.is_some()
        && user.email_confirmed_at.is_none()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "email_not_confirmed",
            "confirm the email address first with the link mailed to it",
        ));
    }
    if user
        .password_hash
        .as_deref()
        .is_some_and(|h| password::needs_rehash(h, &app.password))
    {
        // Parameters were raised since this hash was made: upgrade it now that we have the password.
        let params = app.password;
        if let Ok(h) = with_hash_slot(app, move || password::hash(&pw, &params)).await? {
            user.password_hash = Some(h);
            app.store.update_user(&user).await?;
        }
    }
    let roles = user.roles.clone();
    app.login(&user, "pwd", &[], &roles).await
}

/// API-key login.
#[derive(Deserialize, ToSchema)]
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
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Unknown, revoked or expired API key (`invalid_client`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body sent without `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn api_key_login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenPair>, ApiError> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("apikey"))
        .map(|(_, k)| k.trim().to_string());
    let key = match from_header {
        Some(k) => k,
        None => json_body::<ApiKeyLogin>(&headers, &body)?.api_key,
    };
    Ok(Json(api_key_grant(&app, &key).await?))
}

/// Exchanges an API key for a token pair bound to the key's subject.
pub async fn api_key_grant(app: &App, key: &str) -> Result<TokenPair, ApiError> {
    let invalid =
        || ApiError::unauthorized("invalid_client", "unknown, revoked or expired API key");
    let record = valid_api_key(app, key).await?.ok_or_else(invalid)?;
    // last_used_at is for humans (admin listings): refreshed at most once a minute, so a
    // client logging in in a loop does not pay one more database write per login.
    let t = now();
    if record
        .last_used_at
        .is_none_or(|used| t.saturating_sub(used) >= 60)
    {
        app.store.touch_api_key(&record.id, t).await?;
    }
    // The key is bound to its subject: tokens name that subject, nothing the caller says.
    let user = match app.store.get_user(&record.subject).await {
        // A key bound to a disabled account is as dead as the account's password.
        Ok(u) if u.disabled => return Err(invalid()),
        Ok(u) => u,
        Err(crate::store::StoreError::NotFound) => service_user(&record.subject),
        Err(e) => return Err(e.into()),
    };
    app.login(&user, "key", &record.scopes, &record.roles).await
}

/// The stored key for `key` when it is well-formed, matches (constant-time), and is neither
/// revoked nor expired.
pub async fn valid_api_key(app: &App, key: &str) -> Result<Option<crate::store::ApiKey>, ApiError> {
    let Some((prefix, full)) = secrets::parse_api_key(key) else {
        return Ok(None);
    };
    let Some(record) = app.store.find_api_key_by_prefix(&prefix).await? else {
        return Ok(None);
    };
    let t = now();
    let ok = secrets::constant_time_eq(&secrets::hash_api_key(&full, &app.pepper), &record.hash)
        && record.revoked_at.is_none()
        && record.expires_at.is_none_or(|e| e > t);
    Ok(ok.then_some(record))
}

/// A machine identity that has no account row.
fn service_user(subject: &str) -> User {
    User {
        id: subject.to_string(),
        email: None,
        username: None,
        phone: None,
        password_hash: None,
        roles: Vec::new(),
        app_metadata: json!({}),
        user_metadata: json!({}),
        anonymous: false,
        email_confirmed_at: None,
        disabled: false,
        created_at: 0,
        updated_at: 0,
    }
}

/// Creates an anonymous user and logs it in (`amr: ["anon"]`).
#[utoipa::path(
    post,
    path = "/v1/auth/anonymous",
    tag = "auth",
    responses(
        (status = 201, description = "A new anonymous user, logged in", body = TokenPair),
        (status = 403, description = "Anonymous sign-in is disabled (`disabled`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn anonymous_login(
    State(app): State<Arc<App>>,
) -> Result<(StatusCode, Json<TokenPair>), ApiError> {
    if !app.cfg.anonymous_enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "disabled",
            "anonymous sign-in is disabled",
        ));
    }
    let user = app
        .store
        .create_user(&NewUser {
            email: None,
            username: None,
            phone: None,
            password_hash: None,
            roles: Vec::new(),
            app_metadata: json!({}),
            user_metadata: json!({}),
            anonymous: true,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(app.login(&user, "anon", &[], &[]).await?),
    ))
}

/// A refresh token to rotate.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshBody {
    /// The current refresh token of the session.
    refresh_token: String,
}

/// Rotates a refresh token: the answer carries a new pair.
pub async fn rotate(app: &App, presented: &str) -> Result<TokenPair, ApiError> {
    let invalid = |why: &str| ApiError::unauthorized("invalid_grant", why.to_string());
    if presented.len() > 256 {
        return Err(invalid("unknown refresh token"));
    }
    let new_refresh = secrets::random_token();
    let outcome = app
        .store
        .rotate_refresh(
            &secrets::hash_token(presented),
            &secrets::hash_token(&new_refresh),
            now(),
            app.cfg.refresh_reuse_grace.as_secs() as i64,
            app.cfg.session_idle.as_secs() as i64,
        )
        .await?;
    let label = match &outcome {
        RotateOutcome::Rotated { .. } => "rotated",
        RotateOutcome::WithinGrace { .. } => "grace",
        RotateOutcome::Reused { .. } => "reused",
        _ => "invalid",
    };
    app.metrics.refreshes.with_label_values(&[label]).inc();
    let session: Session = match outcome {
        RotateOutcome::Rotated { session } | RotateOutcome::WithinGrace { session } => session,
        RotateOutcome::Reused { .. } => {
            return Err(invalid(
                "refresh token reuse detected: the session has been revoked",
            ))
        }
        RotateOutcome::Unknown => return Err(invalid("unknown refresh token")),
        RotateOutcome::SessionInactive => {
            return Err(invalid("the session has expired or was revoked"))
        }
    };
    // A session opened with an API key keeps the roles that key granted (never more, even
    // when the key's subject is an account with other roles); every other session gets the
    // account's current roles, so an admin's change applies at the next refresh.
    let by_key = session.amr.iter().any(|m| m == "key");
    let (user, roles) = match app.store.get_user(&session.user_id).await {
        Ok(u) if !by_key => {
            let roles = u.roles.clone();
            (u, roles)
        }
        Ok(u) => (u, session.roles.clone()),
        Err(crate::store::StoreError::NotFound) => {
            (service_user(&session.user_id), session.roles.clone())
        }
        Err(e) => return Err(e.into()),
    };
    if user.disabled {
        return Err(invalid("the account is disabled"));
    }
    let access_token = app.access_token(&user, &session, &session.scopes, &roles)?;
    Ok(TokenPair {
        access_token,
        token_type: "Bearer",
        expires_in: app.cfg.access_ttl.as_secs(),
        refresh_token: new_refresh,
    })
}

/// Rotates a refresh token: the answer carries a new pair; the old refresh token is spent.
///
/// Presenting a spent refresh token again (after a short grace period) revokes the session.
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    request_body(content = RefreshBody, content_type = "application/json"),
    responses(
        (status = 200, description = "A new token pair", body = TokenPair),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Unknown, reused or expired refresh token, or disabled account (`invalid_grant`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body sent without `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn refresh(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenPair>, ApiError> {
    let b: RefreshBody = json_body(&headers, &body)?;
    Ok(Json(rotate(&app, &b.refresh_token).await?))
}

/// Claims of a valid access token from this issuer (signature, expiry, type, issuer).
pub fn verify_access(app: &App, token: &str) -> Result<Value, ApiError> {
    let invalid = || ApiError::unauthorized("invalid_token", "invalid or expired access token");
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
    // A refresh token is opaque: it never parses as a JWT, so it cannot pass here.
    if header.typ.as_deref().map(|t| t.to_ascii_lowercase()) != Some("at+jwt".into()) {
        return Err(invalid());
    }
    let kid = header.kid.ok_or_else(invalid)?;
    let view = app.keys.view();
    let decoding = view.verifiers.get(&kid).ok_or_else(invalid)?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[&app.cfg.issuer]);
    validation.set_audience(&app.cfg.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let data =
        jsonwebtoken::decode::<Value>(token, decoding, &validation).map_err(|_| invalid())?;
    Ok(data.claims)
}

/// The caller's user, from an access token whose session is still active.
pub(super) async fn caller(app: &App, headers: &HeaderMap) -> Result<(User, Value), ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized("invalid_token", "a bearer access token is required")
    })?;
    let claims = verify_access(app, token)?;
    let sid = claims
        .get("sid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let active = match app.store.get_session(sid).await {
        Ok(s) => s.revoked_at.is_none(),
        Err(crate::store::StoreError::NotFound) => false,
        Err(e) => return Err(e.into()),
    };
    if !active {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "the session has been revoked",
        ));
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let user = app
        .store
        .get_user(sub)
        .await
        .map_err(|_| ApiError::unauthorized("invalid_token", "unknown user"))?;
    if user.disabled {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "the account is disabled",
        ));
    }
    Ok((user, claims))
}

/// Logout by refresh token (when no access token is sent).
#[derive(Deserialize, ToSchema)]
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
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body sent without `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let session_id = if let Some(token) = bearer(&headers) {
        let claims = verify_access(&app, token)?;
        claims
            .get("sid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    } else {
        let b: LogoutBody = json_body(&headers, &body)?;
        let rt = b.refresh_token.ok_or_else(|| {
            ApiError::bad_request("give a bearer access token or `refresh_token`")
        })?;
        match app
            .store
            .find_session_by_refresh(&secrets::hash_token(&rt))
            .await
        {
            Ok(Some(s)) => s.id,
            Ok(None) | Err(crate::store::StoreError::NotFound) => {
                return Ok(StatusCode::NO_CONTENT)
            }
            Err(e) => return Err(e.into()),
        }
    };
    match app.store.revoke_session(&session_id, now(), "logout").await {
        Ok(()) | Err(crate::store::StoreError::NotFound) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(e.into()),
    }
}

/// Sign-up with an email address and a password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SignupBody {
    /// Email address (lower-cased; must be unique).
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

pub(super) fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub(super) fn password_problem(app: &App, pw: &str) -> Result<(), ApiError> {
    password::check_policy(pw, app.cfg.password_min, app.cfg.password_max).map_err(|p| {
        let text = match p {
            password::PasswordProblem::TooShort { min } => {
                format!("the password must have at least {min} characters")
            }
            password::PasswordProblem::TooLong { max } => {
                format!("the password must have at most {max} characters")
            }
            password::PasswordProblem::Common => {
                "this password is too common; choose another".to_string()
            }
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "weak_password", text)
    })
}

/// Creates an account (when sign-up is enabled) and logs it in.
///
/// With the email flows enabled, a confirmation link is mailed to the address (in the
/// background: a delivery failure does not change the answer).
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "users",
    request_body(content = SignupBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The account is created and logged in", body = TokenPair),
        (status = 400, description = "Malformed body or invalid email address", body = ErrorBody),
        (status = 403, description = "Sign-up is disabled (`disabled`)", body = ErrorBody),
        (status = 409, description = "The email or username is taken (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body sent without `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "The password does not meet the policy (`weak_password`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn signup(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<TokenPair>), ApiError> {
    if !app.cfg.signup_enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "disabled",
            "sign-up is disabled",
        ));
    }
    let b: SignupBody = json_body(&headers, &body)?;
    let email = b.email.trim().to_lowercase();
    if !valid_email(&email) {
        return Err(ApiError::bad_request("`email` is not a valid address"));
    }
    password_problem(&app, &b.password)?;
    let params = app.password;
    let pw = b.password.clone();
    let hash = with_hash_slot(&app, move || password::hash(&pw, &params)).await??;
    let user = app
        .store
        .create_user(&NewUser {
            email: Some(email),
            username: b.username.map(|u| u.trim().to_lowercase()),
            phone: None,
            password_hash: Some(hash),
            roles: Vec::new(),
            app_metadata: json!({}),
            user_metadata: b.user_metadata.unwrap_or_else(|| json!({})),
            anonymous: false,
        })
        .await?;
    let pair = app.login(&user, "pwd", &[], &[]).await?;
    if let (true, Some(email)) = (app.cfg.email.enabled, user.email.clone()) {
        // Delivery problems are logged and counted; the account exists either way.
        super::email::send_link(&app, MailKind::ConfirmEmail, user.id.clone(), email);
    }
    Ok((StatusCode::CREATED, Json(pair)))
}

// Schema for the OpenAPI document only: `user_json` writes the JSON (a test in `openapi.rs`
// keeps the two in step).
/// A user as the API shows it (never the password hash).
#[derive(ToSchema)]
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

/// The public view of a user (never the password hash).
pub fn user_json(u: &User) -> Value {
    json!({
        "id": u.id, "email": u.email, "username": u.username, "phone": u.phone,
        "roles": u.roles, "app_metadata": u.app_metadata, "user_metadata": u.user_metadata,
        "anonymous": u.anonymous, "email_confirmed_at": u.email_confirmed_at, "disabled": u.disabled,
        "created_at": u.created_at, "updated_at": u.updated_at,
    })
}

/// The caller's account.
#[utoipa::path(
    get,
    path = "/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = UserView),
        (status = 401, description = "Missing, invalid or revoked access token (`invalid_token`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn me(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let (user, _) = caller(&app, &headers).await?;
    Ok(Json(user_json(&user)))
}

/// Changes to the caller's account; absent fields are left alone.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateMe {
    /// New email address (unconfirmed; with the email flows on, an existing address is
    /// replaced only once the link mailed to the new one is used).
    email: Option<String>,
    /// New password, checked against the policy.
    password: Option<String>,
    /// The current password; required with `password` when the account has one.
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
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body sent without `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "The new password does not meet the policy (`weak_password`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn update_me(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (mut user, _) = caller(&app, &headers).await?;
    let b: UpdateMe = json_body(&headers, &body)?;
    let mut pending_link = None;
    if let Some(email) = b.email {
        let email = email.trim().to_lowercase();
        if !valid_email(&email) {
            return Err(ApiError::bad_request("`email` is not a valid address"));
        }
        if !app.cfg.email.enabled {
            user.email = Some(email);
            user.email_confirmed_at = None;
        } else if user.email.as_deref() == Some(email.as_str()) {
            // Unchanged: keeps its confirmation.
        } else if user.email.is_some() {
            // Re-confirmation: the new address replaces the old one only when the link
            // mailed to it is used (POST /v1/users/confirm).
            if app.store.find_user_by_email(&email).await?.is_some() {
                return Err(crate::store::StoreError::Conflict("email".into()).into());
            }
            pending_link = Some((MailKind::ChangeEmail, email));
        } else {
            user.email = Some(email.clone());
            user.email_confirmed_at = None;
            pending_link = Some((MailKind::ConfirmEmail, email));
        }
    }
    if let Some(pw) = b.password {
        password_problem(&app, &pw)?;
        if let Some(current) = user.password_hash.clone() {
            // Changing a password needs the old one: a stolen access token is not enough.
            let old = b.old_password.ok_or_else(|| {
                ApiError::bad_request("`old_password` is required to change the password")
            })?;
            if !with_hash_slot(&app, move || password::verify(&old, &current)).await? {
                return Err(ApiError::unauthorized(
                    "invalid_grant",
                    "the old password is wrong",
                ));
            }
        }
        let params = app.password;
        user.password_hash =
            Some(with_hash_slot(&app, move || password::hash(&pw, &params)).await??);
    }
    if let Some(meta) = b.user_metadata {
        if !meta.is_object() {
            return Err(ApiError::bad_request("`user_metadata` must be an object"));
        }
        user.user_metadata = meta;
    }
    // An anonymous user that now has an email and a password is a real account, same subject.
    if user.anonymous && user.email.is_some() && user.password_hash.is_some() {
        user.anonymous = false;
    }
    app.store.update_user(&user).await?;
    if let Some((kind, email)) = pending_link {
        super::email::send_link(&app, kind, user.id.clone(), email);
    }
    let user = app.store.get_user(&user.id).await?;
    Ok(Json(user_json(&user)))
}
