//! The caller's own account: changing its email address (re-confirmed by link when the email
//! flows are on), its password (the old one required) and its user metadata.

use std::sync::Arc;

use serde_json::Value;

use super::{email_links, AuthError};
use crate::accounts;
use crate::app::App;
use crate::mail::MailKind;
use crate::store::{StoreError, TokenCutoff, User};

/// Changes to the caller's account; `None` leaves a field alone.
#[derive(Debug, Default)]
pub(crate) struct ProfileChanges {
    /// New email address.
    pub email: Option<String>,
    /// New password, checked against the policy.
    pub password: Option<String>,
    /// The current password; required with `password` when the account has one.
    pub old_password: Option<String>,
    /// Replaces the user metadata (a JSON object).
    pub user_metadata: Option<Value>,
}

/// Applies `changes` to `user` (the verified caller) and returns the account as stored.
///
/// With the email flows on, a new address replaces an existing one only once confirmed by the
/// link mailed to it; a first address is set at once, unconfirmed, and a link mailed to it. An
/// anonymous user that gains an email and a password becomes a regular account, same id.
pub(crate) async fn update(
    app: &Arc<App>,
    mut user: User,
    changes: ProfileChanges,
) -> Result<User, AuthError> {
    let mut pending_link = None;
    if let Some(email) = changes.email {
        let email = accounts::normalize_email(&email)?;
        if !app.cfg.email.enabled {
            user.email = Some(email);
            user.email_confirmed_at = None;
        } else if user.email.as_deref() == Some(email.as_str()) {
            // Unchanged: keeps its confirmation.
        } else if user.email.is_some() {
            // Re-confirmation: the new address replaces the old one only when the link
            // mailed to it is used (POST /v1/users/confirm).
            if app.store.find_user_by_email(&email).await?.is_some() {
                return Err(StoreError::Conflict("email".into()).into());
            }
            pending_link = Some((MailKind::ChangeEmail, email));
        } else {
            user.email = Some(email.clone());
            user.email_confirmed_at = None;
            pending_link = Some((MailKind::ConfirmEmail, email));
        }
    }
    let mut cutoff = TokenCutoff::Nothing;
    if let Some(pw) = changes.password {
        accounts::check_password(app, &pw)?;
        if let Some(current) = user.password_hash.clone() {
            // Changing a password needs the old one: a stolen access token is not enough.
            let old = changes.old_password.ok_or(AuthError::BadRequest(
                "`old_password` is required to change the password",
            ))?;
            if !accounts::verify_password(app, old, current).await? {
                return Err(AuthError::InvalidGrant("the old password is wrong"));
            }
        }
        if user.password_hash.is_some() {
            // A changed password ends the access tokens already issued (whoever used the old
            // password may hold some); the sessions live on, as before, so the caller's own
            // refresh token gets it a new access token.
            cutoff = TokenCutoff::Tokens;
        }
        user.password_hash = Some(accounts::hash_password(app, pw).await?);
    }
    if let Some(meta) = changes.user_metadata {
        if !meta.is_object() {
            return Err(AuthError::BadRequest("`user_metadata` must be an object"));
        }
        user.user_metadata = meta;
    }
    // An anonymous user that now has an email and a password is a real account, same subject.
    if user.anonymous && user.email.is_some() && user.password_hash.is_some() {
        user.anonymous = false;
    }
    app.store
        .update_user_with(&user, cutoff, crate::app::now())
        .await?;
    if let Some((kind, email)) = pending_link {
        email_links::send(app, kind, user.id.clone(), email);
    }
    Ok(app.store.get_user(&user.id).await?)
}
