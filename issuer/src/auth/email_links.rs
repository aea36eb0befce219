//! The email flows: confirming an address by link, resending that link, and resetting a
//! forgotten password by link.
//!
//! Link tokens are 256-bit random values; only their SHA-256 is stored; each is single use
//! (an atomic conditional update) and expires (`email.confirm_ttl`, `email.reset_ttl`); a new
//! link cancels the older unused ones of the same purpose. Mails are sent from a spawned task,
//! so an answer never waits for (or reveals anything about) delivery.

use std::sync::Arc;

use super::limits::{self, LimitKey};
use super::sessions;
use super::AuthError;
use crate::accounts;
use crate::app::{now, App};
use crate::crypto::secrets;
use crate::mail::{self, MailKind};
use crate::store::{LinkRefusal, StoreError};

/// Rate-limit window of `forgot` and `resend` (the limits are per hour).
const LIMIT_WINDOW: i64 = 3_600;

/// Longest token accepted (real ones have 43 characters).
const MAX_TOKEN_LEN: usize = 256;

/// Refuses when the email flows are off (handlers check this before reading the body).
pub(crate) fn enabled(app: &App) -> Result<(), AuthError> {
    if app.cfg.email.enabled {
        Ok(())
    } else {
        Err(AuthError::Disabled("the email flows are disabled"))
    }
}

/// Counts one hit on `key`; refused once `max` per hour is exceeded.
async fn limit(app: &App, key: LimitKey<'_>, max: i64) -> Result<(), AuthError> {
    let t = now();
    let hits = limits::hit(&app.store, key, LIMIT_WINDOW, t).await?;
    if hits > max {
        return Err(AuthError::TooMany {
            retry_after: limits::window_left(LIMIT_WINDOW, t),
        });
    }
    Ok(())
}

/// Issues a `kind` link for `user_id` and mails it to `email`, in the background: a failure is
/// logged and counted, never reported to the client.
pub(crate) fn send(app: &Arc<App>, kind: MailKind, user_id: String, email: String) {
    let app = app.clone();
    tokio::spawn(async move { deliver(&app, kind, &user_id, &email).await });
}

async fn deliver(app: &App, kind: MailKind, user_id: &str, email: &str) {
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
/// or the new address of an email change, which then replaces the old one. Returns the
/// address and when it was confirmed.
pub(crate) async fn confirm(app: &App, token: &str) -> Result<(String, i64), AuthError> {
    enabled(app)?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::LinkRefused(LinkRefusal::Unknown));
    }
    let hash = secrets::hash_token(token);
    let purposes = ["confirm_email", "change_email"];
    // Check first, so that a link that cannot apply (address taken, or changed since) is
    // refused without being spent.
    let link = app
        .store
        .check_email_link(&hash, &purposes, now())
        .await?
        .map_err(AuthError::LinkRefused)?;
    let target = link
        .email
        .clone()
        .ok_or(AuthError::LinkRefused(LinkRefusal::Unknown))?;
    let user = match app.store.get_user(&link.user_id).await {
        Ok(u) if !u.disabled => u,
        Ok(_) | Err(StoreError::NotFound) => {
            return Err(AuthError::LinkRefused(LinkRefusal::Unknown))
        }
        Err(e) => return Err(e.into()),
    };
    if link.purpose == "confirm_email" && user.email.as_deref() != Some(target.as_str()) {
        return Err(AuthError::LinkStale);
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
        .map_err(AuthError::LinkRefused)?;
    let mut user = app.store.get_user(&link.user_id).await?;
    user.email = Some(target.clone());
    user.email_confirmed_at = Some(t);
    app.store.update_user(&user).await?;
    Ok((target, t))
}

/// Mails a new confirmation link to the caller's unconfirmed address (older links stop
/// working); the caller is named by a bearer access token.
pub(crate) async fn resend(app: &Arc<App>, bearer: Option<&str>) -> Result<(), AuthError> {
    enabled(app)?;
    let (user, _) = sessions::caller(app, bearer).await?;
    let Some(email) = user.email.clone() else {
        return Err(AuthError::BadRequest("the account has no email address"));
    };
    if user.email_confirmed_at.is_some() {
        return Err(AuthError::BadRequest(
            "the email address is already confirmed",
        ));
    }
    limit(
        app,
        LimitKey::ConfirmResend(&user.id),
        app.cfg.email.forgot_per_email,
    )
    .await?;
    send(app, MailKind::ConfirmEmail, user.id, email);
    Ok(())
}

/// Mails a password-reset link to the address when it belongs to an enabled account.
///
/// The outcome is the same whether or not it does, and is decided before anything is looked
/// up, so neither the answer nor its timing tells which addresses have accounts.
pub(crate) async fn forgot(app: &Arc<App>, email: &str, ip: &str) -> Result<(), AuthError> {
    enabled(app)?;
    let email = accounts::normalize_email(email)?;
    // Counted for unknown addresses too, so a 429 says nothing about existence either.
    limit(
        app,
        LimitKey::ForgotEmail(&email),
        app.cfg.email.forgot_per_email,
    )
    .await?;
    limit(app, LimitKey::ForgotIp(ip), app.cfg.email.forgot_per_ip).await?;
    let app2 = app.clone();
    tokio::spawn(async move {
        match app2.store.find_user_by_email(&email).await {
            Ok(Some(u)) if !u.disabled && !u.anonymous => {
                deliver(&app2, MailKind::ResetPassword, &u.id, &email).await
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "password reset: user lookup failed"),
        }
    });
    Ok(())
}

/// Sets a new password with the token of a reset link, and signs the account out everywhere.
pub(crate) async fn reset(
    app: &Arc<App>,
    token: &str,
    new_password: String,
) -> Result<(), AuthError> {
    enabled(app)?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::LinkRefused(LinkRefusal::Unknown));
    }
    let hash = secrets::hash_token(token);
    let purposes = ["reset_password"];
    // A valid link first (no argon2 work for strangers), then the policy: a weak password
    // leaves the link usable.
    app.store
        .check_email_link(&hash, &purposes, now())
        .await?
        .map_err(AuthError::LinkRefused)?;
    accounts::check_password(app, &new_password)?;
    let new_hash = accounts::hash_password(app, new_password).await?;
    // Spending the link, setting the password and signing out run to completion in their own
    // task: a client that disconnects half-way must not leave a changed password with the
    // old sessions still alive.
    tokio::spawn(apply_reset(app.clone(), hash, new_hash))
        .await
        .map_err(|_| AuthError::Internal)?
}

/// The writes of a password reset, once the link and the new password checked out.
async fn apply_reset(app: Arc<App>, hash: String, new_hash: String) -> Result<(), AuthError> {
    let purposes = ["reset_password"];
    let t = now();
    let link = app
        .store
        .consume_email_link(&hash, &purposes, t)
        .await?
        .map_err(AuthError::LinkRefused)?;
    let mut user = match app.store.get_user(&link.user_id).await {
        Ok(u) if !u.disabled => u,
        Ok(_) | Err(StoreError::NotFound) => {
            return Err(AuthError::LinkRefused(LinkRefusal::Unknown))
        }
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
        let login = login.to_lowercase();
        limits::reset(&app.store, LimitKey::PasswordFailAccount(&login)).await?;
    }
    Ok(())
}
