//! The email flows: confirming an address by link, resending that link, and resetting a
//! forgotten password by link.
//!
//! Link tokens are 256-bit random values; only their SHA-256 is stored; each is single use
//! (an atomic conditional update) and expires (`email.confirm_ttl`, `email.reset_ttl`); a new
//! link cancels the older unused ones of the same purpose. Mails are sent from a spawned task,
//! so an answer never waits for (or reveals anything about) delivery.

use std::sync::Arc;

use super::limits::{self, Budget, LimitKey};
use super::sessions;
use super::AuthError;
use crate::accounts;
use crate::app::{now, App};
use crate::crypto::secrets;
use crate::mail::{self, MailKind};
use crate::store::{LinkRefusal, StoreError, TokenCutoff};

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

/// Refuses when the global mail budget (`limits.mail.global`) is spent, without counting:
/// the mail itself counts, in [`deliver`], and endpoints that only send mail ask first so that
/// their client gets a 429 rather than silence.
async fn mail_room(app: &App) -> Result<(), AuthError> {
    limits::check(
        &app.store,
        &[(LimitKey::MailGlobal, app.cfg.limits.mail.global)],
    )
    .await
}

/// Issues a `kind` link for `user_id` and mails it to `email`, in the background: a failure is
/// logged and counted, never reported to the client.
pub(crate) fn send(app: &Arc<App>, kind: MailKind, user_id: String, email: String) {
    let app = app.clone();
    tokio::spawn(async move { deliver(&app, kind, &user_id, &email).await });
}

async fn deliver(app: &App, kind: MailKind, user_id: &str, email: &str) {
    let cfg = &app.cfg.email;
    // Every send path ends here: the one place the global mail budget is counted.
    if let Some(budget) = app.cfg.limits.mail.global {
        let refused = match limits::hit(&app.store, LimitKey::MailGlobal, budget, now()).await {
            Ok(check) if check.admitted => None,
            Ok(_) => Some(("limited", "limits.mail.global is spent".to_string())),
            Err(e) => Some(("failed", format!("counting the mail: {e}"))),
        };
        if let Some((label, why)) = refused {
            tracing::warn!(kind = kind.as_str(), user = user_id, "mail not sent: {why}");
            app.metrics
                .emails
                .with_label_values(&[kind.as_str(), label])
                .inc();
            return;
        }
    }
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
/// address and when it was confirmed. Submissions from `ip` are limited
/// (`limits.email_confirm`).
pub(crate) async fn confirm(app: &App, token: &str, ip: &str) -> Result<(String, i64), AuthError> {
    enabled(app)?;
    let per_ip = app.cfg.limits.email_confirm.per_ip;
    limits::take(&app.store, &[(LimitKey::EmailConfirmIp(ip), per_ip)]).await?;
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
/// working); the caller is named by a bearer access token. Limited per account and per client
/// address `ip` (`limits.confirm_resend`), and by the mail budget.
pub(crate) async fn resend(
    app: &Arc<App>,
    bearer: Option<&str>,
    ip: &str,
) -> Result<(), AuthError> {
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
    mail_room(app).await?;
    let rule = &app.cfg.limits.confirm_resend;
    limits::take(
        &app.store,
        &[
            (LimitKey::ConfirmResend(&user.id), rule.per_account),
            (LimitKey::ConfirmResendIp(ip), rule.per_ip),
        ],
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
    mail_room(app).await?;
    // Counted for unknown addresses too, so a 429 says nothing about existence either.
    let cfg = &app.cfg.email;
    limits::take(
        &app.store,
        &[
            (
                LimitKey::ForgotEmail(&email),
                Some(Budget::per_hour(cfg.forgot_per_email)),
            ),
            (
                LimitKey::ForgotIp(ip),
                Some(Budget::per_hour(cfg.forgot_per_ip)),
            ),
        ],
    )
    .await?;
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
/// Submissions from `ip` are limited (`limits.password_reset`): each costs lookups and, with a
/// valid link, a password hash.
pub(crate) async fn reset(
    app: &Arc<App>,
    token: &str,
    new_password: String,
    ip: &str,
) -> Result<(), AuthError> {
    enabled(app)?;
    let per_ip = app.cfg.limits.password_reset.per_ip;
    limits::take(&app.store, &[(LimitKey::PasswordResetIp(ip), per_ip)]).await?;
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
    // Whoever knew the old password (or holds a stolen refresh token) is signed out, in the
    // same transaction as the new password.
    app.store
        .update_user_with(&user, TokenCutoff::Sessions("password_reset"), t)
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
