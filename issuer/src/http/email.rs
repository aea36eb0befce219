//! The email flows: confirming an address by link, resending that link, and resetting a
//! forgotten password by link (routes registered in [`super::public::router`]).
//!
//! Link tokens are 256-bit random values; only their SHA-256 is stored; each is single use
//! (an atomic conditional update) and expires (`email.confirm_ttl`, `email.reset_ttl`); a new
//! link cancels the older unused ones of the same purpose. Mails are sent from a spawned task,
//! so an answer never waits for (or reveals anything about) delivery.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::public::{caller, client_ip, password_problem, valid_email, with_hash_slot};
use super::{json_body, ApiError, ErrorBody};
use crate::app::{now, App};
use crate::crypto::{password, secrets};
use crate::mail::{self, MailKind};
use crate::store::{LinkRefusal, StoreError};

/// Rate-limit window of `forgot` and `resend` (the limits are per hour).
const LIMIT_WINDOW: i64 = 3_600;

/// Longest token accepted (real ones have 43 characters).
const MAX_TOKEN_LEN: usize = 256;

/// The answer of `forgot` and `resend`, the same whatever the account.
const ACCEPTED: &str = "if an account with this address exists, a message has been sent to it";

/// A link token from a mail.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfirmBody {
    /// The token of the confirmation link.
    token: String,
}

/// The address that forgot its password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ForgotBody {
    /// The account's email address (case-insensitive).
    email: String,
}

/// A reset-link token and the new password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResetBody {
    /// The token of the reset link.
    token: String,
    /// The new password, checked against the password policy.
    new_password: String,
}

// Schema for the OpenAPI document only; the handlers write the JSON themselves.
/// Request accepted; the same answer for every address.
#[derive(ToSchema)]
pub struct AcceptedBody {
    /// Always `accepted`.
    #[schema(example = "accepted")]
    pub status: String,
    /// Human-readable text.
    pub message: String,
}

// Schema for the OpenAPI document only; the handlers write the JSON themselves.
/// The confirmed address.
#[derive(ToSchema)]
pub struct ConfirmedBody {
    /// The account's (now confirmed) email address.
    pub email: String,
    /// When it was confirmed (seconds since the epoch).
    pub email_confirmed_at: i64,
}

fn accepted() -> (StatusCode, Json<Value>) {
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "accepted", "message": ACCEPTED})),
    )
}

fn enabled(app: &App) -> Result<(), ApiError> {
    if app.cfg.email.enabled {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "disabled",
            "the email flows are disabled",
        ))
    }
}

fn refused(r: LinkRefusal) -> ApiError {
    let text = match r {
        LinkRefusal::Unknown => {
            "unknown link token (a newer link replaces older ones); ask for a new link"
        }
        LinkRefusal::Used => "this link has already been used",
        LinkRefusal::Expired => "this link has expired; ask for a new one",
    };
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_grant", text)
}

/// Counts one hit on `key`; 429 with `Retry-After` once `max` per hour is exceeded.
async fn limit(app: &App, key: &str, max: i64) -> Result<(), ApiError> {
    let t = now();
    let hits = app.store.hit_limit(key, LIMIT_WINDOW, t).await?;
    if hits > max {
        return Err(ApiError::too_many(
            LIMIT_WINDOW - t.rem_euclid(LIMIT_WINDOW),
        ));
    }
    Ok(())
}

/// Issues a `kind` link for `user_id` and mails it to `email`, in the background: a failure is
/// logged and counted, never reported to the client.
pub fn send_link(app: &Arc<App>, kind: MailKind, user_id: String, email: String) {
    let app = app.clone();
    tokio::spawn(async move { deliver_link(&app, kind, &user_id, &email).await });
}

async fn deliver_link(app: &App, kind: MailKind, user_id: &str, email: &str) {
    let cfg = &app.cfg.email;
    let ttl = match kind {
        MailKind::ResetPassword => cfg.reset_ttl,
        MailKind::ConfirmEmail | MailKind::ChangeEmail => cfg.confirm_ttl,
    };
    let token = secrets::random_token();
    let t = now();
    let stored = app
        .store
        .create_email_link(
            &secrets::hash_token(&token),
            kind.as_str(),
            user_id,
            Some(email),
            t,
            t.saturating_add(ttl.as_secs() as i64),
        )
        .await;
    let outcome = match stored {
        Err(e) => Err(format!("storing the link: {e}")),
        Ok(()) => match mail::render(cfg, kind, email, &token) {
            Err(e) => Err(e.to_string()),
            Ok(m) => app.mailer.send(&m).await.map_err(|e| e.to_string()),
        },
    };
    let label = match &outcome {
        Ok(()) => "sent",
        Err(e) => {
            tracing::warn!(kind = kind.as_str(), user = user_id, error = %e, "mail not delivered");
            "failed"
        }
    };
    app.metrics
        .emails
        .with_label_values(&[kind.as_str(), label])
        .inc();
}

/// Confirms an email address with the token of a confirmation link: a new account's address,
/// or the new address of an email change, which then replaces the old one.
#[utoipa::path(
    post,
    path = "/v1/users/confirm",
    tag = "users",
    request_body(content = ConfirmBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The address is confirmed (and, for a change, now the account's)", body = ConfirmedBody),
        (status = 400, description = "Malformed body, or an unknown, used or expired token (`invalid_grant`)", body = ErrorBody),
        (status = 403, description = "The email flows are disabled (`disabled`)", body = ErrorBody),
        (status = 409, description = "The new address was taken by another account meanwhile (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body sent without `Content-Type: application/json`", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn confirm(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    enabled(&app)?;
    let b: ConfirmBody = json_body(&headers, &body)?;
    if b.token.len() > MAX_TOKEN_LEN {
        return Err(refused(LinkRefusal::Unknown));
    }
    let hash = secrets::hash_token(&b.token);
    let purposes = ["confirm_email", "change_email"];
    // Check first, so that a link that cannot apply (address taken, or changed since) is
    // refused without being spent.
    let link = app
        .store
        .check_email_link(&hash, &purposes, now())
        .await?
        .map_err(refused)?;
    let target = link.email.clone().ok_or(refused(LinkRefusal::Unknown))?;
    let user = match app.store.get_user(&link.user_id).await {
        Ok(u) if !u.disabled => u,
        Ok(_) | Err(StoreError::NotFound) => return Err(refused(LinkRefusal::Unknown)),
        Err(e) => return Err(e.into()),
    };
    if link.purpose == "confirm_email" && user.email.as_deref() != Some(target.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the account's address changed since this link was sent",
        ));
    }
    if link.purpose == "change_email" {
        if let Some(other) = app.store.find_user_by_email(&target).await? {
            if other.id != user.id {
                return Err(StoreError::Conflict("email".into()).into());
            }
        }
    }
    // The single winner of concurrent uses gets past this line.
    let t = now();
    app.store
        .consume_email_link(&hash, &purposes, t)
        .await?
        .map_err(refused)?;
    let mut user = app.store.get_user(&link.user_id).await?;
    user.email = Some(target.clone());
    user.email_confirmed_at = Some(t);
    app.store.update_user(&user).await?;
    Ok(Json(json!({"email": target, "email_confirmed_at": t})))
}

/// Mails a new confirmation link to the caller's unconfirmed address (older links stop
/// working).
#[utoipa::path(
    post,
    path = "/v1/users/confirm/resend",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A new link is on its way", body = AcceptedBody),
        (status = 400, description = "The account has no address, or it is already confirmed", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked access token (`invalid_token`)", body = ErrorBody),
        (status = 403, description = "The email flows are disabled (`disabled`)", body = ErrorBody),
        (status = 429, description = "Too many requests for this account (`too_many_requests`, with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn resend(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    enabled(&app)?;
    let (user, _) = caller(&app, &headers).await?;
    let Some(email) = user.email.clone() else {
        return Err(ApiError::bad_request("the account has no email address"));
    };
    if user.email_confirmed_at.is_some() {
        return Err(ApiError::bad_request(
            "the email address is already confirmed",
        ));
    }
    limit(
        &app,
        &format!("confirm-resend:{}", user.id),
        app.cfg.email.forgot_per_email,
    )
    .await?;
    send_link(&app, MailKind::ConfirmEmail, user.id, email);
    Ok(accepted())
}

/// Mails a password-reset link to the address when it belongs to an enabled account.
///
/// The answer is the same whether or not it does, and is given before anything is looked
/// up, so neither its content nor its timing tells which addresses have accounts.
#[utoipa::path(
    post,
    path = "/v1/password/forgot",
    tag = "users",
    request_body(content = ForgotBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted (for known and unknown addresses alike)", body = AcceptedBody),
        (status = 400, description = "Malformed body or invalid email address", body = ErrorBody),
        (status = 403, description = "The email flows are disabled (`disabled`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body sent without `Content-Type: application/json`", body = ErrorBody),
        (status = 429, description = "Too many requests for this address or from this client (`too_many_requests`, with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn forgot(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    enabled(&app)?;
    let b: ForgotBody = json_body(&headers, &body)?;
    let email = b.email.trim().to_lowercase();
    if !valid_email(&email) {
        return Err(ApiError::bad_request("`email` is not a valid address"));
    }
    // Counted for unknown addresses too, so a 429 says nothing about existence either.
    limit(
        &app,
        &format!("forgot:email:{email}"),
        app.cfg.email.forgot_per_email,
    )
    .await?;
    let ip = client_ip(peer, &headers);
    limit(
        &app,
        &format!("forgot:ip:{ip}"),
        app.cfg.email.forgot_per_ip,
    )
    .await?;
    let app2 = app.clone();
    tokio::spawn(async move {
        match app2.store.find_user_by_email(&email).await {
            Ok(Some(u)) if !u.disabled && !u.anonymous => {
                deliver_link(&app2, MailKind::ResetPassword, &u.id, &email).await
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "password reset: user lookup failed"),
        }
    });
    Ok(accepted())
}

/// Sets a new password with the token of a reset link, and signs the account out everywhere.
#[utoipa::path(
    post,
    path = "/v1/password/reset",
    tag = "users",
    request_body(content = ResetBody, content_type = "application/json"),
    responses(
        (status = 204, description = "The password is changed and every session of the account is revoked"),
        (status = 400, description = "Malformed body, or an unknown, used or expired token (`invalid_grant`)", body = ErrorBody),
        (status = 403, description = "The email flows are disabled (`disabled`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Body sent without `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "The new password does not meet the policy (`weak_password`); the link stays usable", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn reset(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    enabled(&app)?;
    let b: ResetBody = json_body(&headers, &body)?;
    if b.token.len() > MAX_TOKEN_LEN {
        return Err(refused(LinkRefusal::Unknown));
    }
    let hash = secrets::hash_token(&b.token);
    let purposes = ["reset_password"];
    // A valid link first (no argon2 work for strangers), then the policy: a weak password
    // leaves the link usable.
    app.store
        .check_email_link(&hash, &purposes, now())
        .await?
        .map_err(refused)?;
    password_problem(&app, &b.new_password)?;
    let params = app.password;
    let pw = b.new_password;
    let new_hash = with_hash_slot(&app, move || password::hash(&pw, &params)).await??;
    // Spending the link, setting the password and signing out run to completion in their own
    // task: a client that disconnects half-way must not leave a changed password with the
    // old sessions still alive.
    tokio::spawn(apply_reset(app.clone(), hash, new_hash))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the request could not be completed",
            )
        })?
}

/// The writes of a password reset, once the link and the new password checked out.
async fn apply_reset(
    app: Arc<App>,
    hash: String,
    new_hash: String,
) -> Result<StatusCode, ApiError> {
    let purposes = ["reset_password"];
    let t = now();
    let link = app
        .store
        .consume_email_link(&hash, &purposes, t)
        .await?
        .map_err(refused)?;
    let mut user = match app.store.get_user(&link.user_id).await {
        Ok(u) if !u.disabled => u,
        Ok(_) | Err(StoreError::NotFound) => return Err(refused(LinkRefusal::Unknown)),
        Err(e) => return Err(e.into()),
    };
    user.password_hash = Some(new_hash);
    // Using the link proves control of the mailbox it was sent to.
    if user.email_confirmed_at.is_none() && user.email.is_some() && user.email == link.email {
        user.email_confirmed_at = Some(t);
    }
    app.store.update_user(&user).await?;
    // Whoever knew the old password (or holds a stolen refresh token) is signed out.
    app.store
        .revoke_user_sessions(&user.id, t, "password_reset")
        .await?;
    for login in [user.email.as_deref(), user.username.as_deref()]
        .into_iter()
        .flatten()
    {
        app.store
            .reset_limit(&format!("pwfail:acct:{}", login.to_lowercase()))
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
