//! The admin API, served on its own listener (loopback by default) and guarded by the admin
//! token: users (the `/admin/users/{id}` client services call), API keys, signing keys,
//! sessions.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::public::user_json;
use super::{bearer, json_body, ApiError};
use crate::app::{now, App};
use crate::crypto::{password, secrets};
use crate::store::{ApiKey, NewUser};

/// The admin router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/admin/users", get(list_users).post(create_user))
        .route(
            "/admin/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/admin/users/{id}/roles", put(set_roles))
        .route(
            "/admin/users/{id}/sessions",
            get(list_sessions).delete(revoke_user_sessions),
        )
        .route("/admin/sessions/{id}", delete(revoke_session))
        .route("/admin/api-keys", get(list_api_keys).post(create_api_key))
        .route("/admin/api-keys/{id}", delete(revoke_api_key))
        .route("/admin/keys", get(list_keys))
        .route("/admin/keys/rotate", post(rotate_keys))
        .fallback(super::not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), require_admin))
        .with_state(app)
}

/// The admin API opens to the admin token, or to an access token of this issuer carrying
/// role `admin` whose session is still active.
async fn require_admin(State(app): State<Arc<App>>, req: Request, next: Next) -> Result<Response, ApiError> {
    let token = bearer(req.headers()).unwrap_or_default();
    let denied = || ApiError::unauthorized("invalid_token", "the admin API needs the admin token or an access token with role admin");
    if token.is_empty() {
        return Err(denied());
    }
    if !secrets::constant_time_eq(&secrets::hash_token(token), &app.admin_token_hash) {
        let claims = super::public::verify_access(&app, token).map_err(|_| denied())?;
        let is_admin = claims
            .get("roles")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|v| v == "admin"));
        let sid = claims.get("sid").and_then(Value::as_str).unwrap_or_default();
        let active = matches!(app.store.get_session(sid).await, Ok(s) if s.revoked_at.is_none());
        if !is_admin || !active {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "role admin is required"));
        }
    }
    Ok(next.run(req).await)
}

#[derive(Deserialize)]
struct Page {
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list_users(
    State(app): State<Arc<App>>,
    Query(p): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let users = app
        .store
        .list_users(
            p.limit.unwrap_or(100).clamp(1, 1000),
            p.offset.unwrap_or(0).max(0),
        )
        .await?;
    Ok(Json(
        json!({"users": users.iter().map(user_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    email: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    app_metadata: Option<Value>,
    user_metadata: Option<Value>,
}

async fn create_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b: CreateUser = json_body(&headers, &body)?;
    if b.email.is_none() && b.username.is_none() {
        return Err(ApiError::bad_request("give `email` or `username`"));
    }
    let hash = match b.password {
        None => None,
        Some(pw) => {
            password::check_policy(&pw, app.cfg.password_min, app.cfg.password_max).map_err(
                |_| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "weak_password",
                        "the password does not meet the policy",
                    )
                },
            )?;
            let params = app.password;
            Some(
                tokio::task::spawn_blocking(move || password::hash(&pw, &params))
                    .await
                    .map_err(|_| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "server_error",
                            "hashing failed",
                        )
                    })??,
            )
        }
    };
    for meta in [&b.app_metadata, &b.user_metadata].into_iter().flatten() {
        if !meta.is_object() {
            return Err(ApiError::bad_request("metadata must be a JSON object"));
        }
    }
    let user = app
        .store
        .create_user(&NewUser {
            email: b.email.map(|e| e.trim().to_lowercase()),
            username: b.username.map(|u| u.trim().to_lowercase()),
            phone: None,
            password_hash: hash,
            roles: b.roles,
            app_metadata: b.app_metadata.unwrap_or_else(|| json!({})),
            user_metadata: b.user_metadata.unwrap_or_else(|| json!({})),
            anonymous: false,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(user_json(&user))))
}

async fn get_user(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(user_json(&app.store.get_user(&id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    email: Option<String>,
    username: Option<String>,
    roles: Option<Vec<String>>,
    app_metadata: Option<Value>,
    user_metadata: Option<Value>,
    disabled: Option<bool>,
}

async fn update_user(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: UpdateUser = json_body(&headers, &body)?;
    let mut user = app.store.get_user(&id).await?;
    if let Some(e) = b.email {
        user.email = Some(e.trim().to_lowercase());
    }
    if let Some(u) = b.username {
        user.username = Some(u.trim().to_lowercase());
    }
    if let Some(r) = b.roles {
        user.roles = r;
    }
    if let Some(m) = b.app_metadata {
        user.app_metadata = m;
    }
    if let Some(m) = b.user_metadata {
        user.user_metadata = m;
    }
    if let Some(d) = b.disabled {
        user.disabled = d;
        if d {
            app.store
                .revoke_user_sessions(&id, now(), "disabled")
                .await?;
        }
    }
    app.store.update_user(&user).await?;
    Ok(Json(user_json(&app.store.get_user(&id).await?)))
}

async fn set_roles(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let roles: Vec<String> = json_body(&headers, &body)?;
    let mut user = app.store.get_user(&id).await?;
    user.roles = roles;
    app.store.update_user(&user).await?;
    Ok(Json(user_json(&app.store.get_user(&id).await?)))
}

async fn delete_user(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.store.delete_user(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_sessions(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sessions = app.store.list_sessions(&id).await?;
    Ok(Json(json!({"sessions": sessions.iter().map(|s| json!({
        "id": s.id, "user_id": s.user_id, "amr": s.amr, "created_at": s.created_at,
        "last_used_at": s.last_used_at, "expires_at": s.expires_at,
        "revoked_at": s.revoked_at, "revoked_reason": s.revoked_reason,
    })).collect::<Vec<_>>()})))
}

async fn revoke_user_sessions(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.store.revoke_user_sessions(&id, now(), "admin").await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_session(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.store.revoke_session(&id, now(), "admin").await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateApiKey {
    subject: String,
    name: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    /// Lifetime in seconds (None: no expiry).
    expires_in: Option<i64>,
}

/// Creates an API key; the secret is in the answer and nowhere else, ever.
pub async fn new_api_key(
    app: &App,
    subject: &str,
    name: &str,
    scopes: Vec<String>,
    roles: Vec<String>,
    expires_in: Option<i64>,
) -> Result<(ApiKey, String), ApiError> {
    if subject.trim().is_empty() || subject.len() > 200 {
        return Err(ApiError::bad_request("`subject` must be 1-200 characters"));
    }
    let secret = secrets::new_api_key();
    let t = now();
    let key = ApiKey {
        id: secrets::random_id(),
        prefix: secret.prefix.clone(),
        hash: secrets::hash_api_key(&secret.full, &app.pepper),
        subject: subject.to_string(),
        name: name.to_string(),
        scopes,
        roles,
        expires_at: expires_in.map(|s| t + s.max(1)),
        revoked_at: None,
        last_used_at: None,
        created_at: t,
    };
    app.store.create_api_key(&key).await?;
    Ok((key, secret.full))
}

fn api_key_json(k: &ApiKey) -> Value {
    json!({"id": k.id, "prefix": k.prefix, "subject": k.subject, "name": k.name, "scopes": k.scopes,
           "roles": k.roles, "expires_at": k.expires_at, "revoked_at": k.revoked_at,
           "last_used_at": k.last_used_at, "created_at": k.created_at})
}

async fn create_api_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b: CreateApiKey = json_body(&headers, &body)?;
    let (key, secret) = new_api_key(
        &app,
        &b.subject,
        b.name.as_deref().unwrap_or(""),
        b.scopes,
        b.roles,
        b.expires_in,
    )
    .await?;
    let mut v = api_key_json(&key);
    v["api_key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Deserialize)]
struct KeyFilter {
    subject: Option<String>,
}

async fn list_api_keys(
    State(app): State<Arc<App>>,
    Query(f): Query<KeyFilter>,
) -> Result<Json<Value>, ApiError> {
    let keys = app.store.list_api_keys(f.subject.as_deref()).await?;
    Ok(Json(
        json!({"api_keys": keys.iter().map(api_key_json).collect::<Vec<_>>()}),
    ))
}

async fn revoke_api_key(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.store.revoke_api_key(&id, now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_keys(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let keys = app.store.list_signing_keys().await?;
    Ok(Json(json!({"keys": keys.iter().map(|k| json!({
        "kid": k.kid, "alg": k.alg, "state": k.state, "created_at": k.created_at,
        "activates_at": k.activates_at, "retired_at": k.retired_at, "remove_after": k.remove_after,
    })).collect::<Vec<_>>()})))
}

async fn rotate_keys(State(app): State<Arc<App>>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kid = app.keys.rotate(&app.store).await.map_err(|e| {
        tracing::error!("key rotation failed: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "key rotation failed",
        )
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"kid": kid, "state": "next", "activates_in": app.cfg.key_publish_lead.as_secs()}),
        ),
    ))
}
