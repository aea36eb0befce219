//! Password login (with per-account and per-IP failure budgets and the same argon2 work for
//! unknown accounts) and sign-up with an email address and a password.

use serde_json::{json, Value};

use super::limits::{self, LimitKey};
use super::sessions::{self, TokenPair};
use super::{email_links, AuthError};
use crate::accounts;
use crate::app::{now, App};
use crate::crypto::password;
use crate::mail::MailKind;
use crate::store::NewUser;

/// Checks both failure budgets; returns `Retry-After` seconds when one is exhausted.
async fn locked_out(
    app: &App,
    account: LimitKey<'_>,
    ip: LimitKey<'_>,
) -> Result<Option<i64>, AuthError> {
    let window = app.cfg.failure_window.as_secs() as i64;
    let t = now();
    let acct = limits::peek(&app.store, account, window, t).await?;
    let ip = limits::peek(&app.store, ip, window, t).await?;
    if acct >= app.cfg.max_failures_per_account || ip >= app.cfg.max_failures_per_ip {
        return Ok(Some(limits::window_left(window, t)));
    }
    Ok(None)
}

/// Checks a login (email or username) and a password, with lock-out and constant-time
/// behaviour for unknown users, and starts a session (`amr: ["pwd"]`).
pub(crate) async fn grant(
    app: &App,
    login: &str,
    pw: String,
    ip: &str,
) -> Result<TokenPair, AuthError> {
    let login = accounts::normalize_login(login);
    if login.is_empty() || pw.is_empty() || pw.chars().count() > app.cfg.password_max {
        return Err(AuthError::BadRequest("missing or oversized credentials"));
    }
    let account_key = LimitKey::PasswordFailAccount(&login);
    let ip_key = LimitKey::PasswordFailIp(ip);
    if let Some(retry_after) = locked_out(app, account_key, ip_key).await? {
        return Err(AuthError::TooMany { retry_after });
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
    let verdict = accounts::with_hash_slot(app, move || match stored {
        Some(phc) => password::check(&pw_for_check, &phc),
        None => {
            // Same work for unknown users, so timing does not reveal which accounts exist.
            password::dummy_verify(&pw_for_check, &params);
            password::Verified::No
        }
    })
    .await?;
    let ok = verdict.ok();
    app.metrics.login("pwd", ok);
    let Some(mut user) = user.filter(|_| ok) else {
        let window = app.cfg.failure_window.as_secs() as i64;
        limits::hit(&app.store, account_key, window, now()).await?;
        limits::hit(&app.store, ip_key, window, now()).await?;
        return Err(AuthError::InvalidGrant("wrong email, username or password"));
    };
    limits::reset(&app.store, account_key).await?;
    if confirmation_required(app) && user.email.is_some() && user.email_confirmed_at.is_none() {
        return Err(AuthError::EmailNotConfirmed);
    }
    if verdict == password::Verified::Legacy
        || user
            .password_hash
            .as_deref()
            .is_some_and(|h| password::needs_rehash(h, &app.password))
    {
        // Parameters were raised, or the hash predates NFKC normalisation: upgrade it now
        // that we have the password.
        let params = app.password;
        if let Ok(h) = accounts::with_hash_slot(app, move || password::hash(&pw, &params)).await? {
            user.password_hash = Some(h);
            app.store.update_user(&user).await?;
        }
    }
    let roles = user.roles.clone();
    sessions::start(app, &user, "pwd", &[], &roles).await
}

/// Refuses when sign-up is off (the handler checks this before reading the body).
pub(crate) fn signup_enabled(app: &App) -> Result<(), AuthError> {
    if app.cfg.signup_enabled {
        Ok(())
    } else {
        Err(AuthError::Disabled("sign-up is disabled"))
    }
}

/// A sign-up request.
pub(crate) struct SignUp {
    /// Email address (trimmed, lower-cased, checked).
    pub email: String,
    /// Password, checked against the policy.
    pub password: String,
    /// Optional username (trimmed, lower-cased).
    pub username: Option<String>,
    /// Optional user metadata.
    pub user_metadata: Option<Value>,
}

/// What a sign-up produced.
pub(crate) enum SignedUp {
    /// The account is logged in.
    LoggedIn(TokenPair),
    /// Password logins need a confirmed address first
    /// (`email.require_confirmed_email_for_password_login`), so no tokens until then: the
    /// link has been sent.
    ConfirmationRequired {
        /// The new account's id.
        user_id: String,
        /// Its (normalised) address, where the link went.
        email: String,
    },
}

/// Whether password logins wait for a confirmed address.
fn confirmation_required(app: &App) -> bool {
    app.cfg.email.enabled && app.cfg.email.require_confirmed
}

/// Creates an account (when sign-up is enabled) and logs it in — unless password logins
/// require a confirmed address, where the account gets no tokens before the link is used.
/// With the email flows on, a confirmation link is mailed in the background (a delivery
/// failure changes nothing).
pub(crate) async fn sign_up(app: &std::sync::Arc<App>, req: SignUp) -> Result<SignedUp, AuthError> {
    signup_enabled(app)?;
    let email = accounts::normalize_email(&req.email)?;
    accounts::check_password(app, &req.password)?;
    let hash = accounts::hash_password(app, req.password).await?;
    let user = app
        .store
        .create_user(&NewUser {
            email: Some(email),
            username: req.username.as_deref().map(accounts::normalize_login),
            phone: None,
            password_hash: Some(hash),
            roles: Vec::new(),
            app_metadata: json!({}),
            user_metadata: req.user_metadata.unwrap_or_else(|| json!({})),
            anonymous: false,
        })
        .await?;
    if let (true, Some(email)) = (app.cfg.email.enabled, user.email.clone()) {
        // Delivery problems are logged and counted; the account exists either way.
        email_links::send(app, MailKind::ConfirmEmail, user.id.clone(), email);
    }
    if confirmation_required(app) {
        return Ok(SignedUp::ConfirmationRequired {
            user_id: user.id,
            email: user.email.unwrap_or_default(),
        });
    }
    let pair = sessions::start(app, &user, "pwd", &[], &[]).await?;
    app.metrics.login("signup", true);
    Ok(SignedUp::LoggedIn(pair))
}
