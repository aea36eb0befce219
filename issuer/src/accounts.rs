//! Accounts: email normalisation and validation, the password policy, password hashing (off
//! the async runtime, through the one semaphore `max_concurrent_hashes`), and the account
//! changes the admin API and the CLI make. Sign-up, the admin API and the CLI all normalise
//! and check through here, so they cannot disagree.

use serde_json::{json, Value};

use crate::app::{now, App};
use crate::crypto::password::{self, PasswordProblem};
use crate::crypto::CryptoError;
use crate::store::{NewUser, StoreError, TokenCutoff, User};

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The email address is not one (after trimming and lower-casing).
    #[error("`email` is not a valid address")]
    InvalidEmail,
    /// Neither an email address nor a username.
    #[error("give `email` or `username`")]
    NoLogin,
    /// A metadata value is not a JSON object.
    #[error("metadata must be a JSON object")]
    MetadataNotObject,
    /// A role outside the role grammar (`portcullis_common::claims`).
    #[error("role {0:?} is invalid: a role is {rule}", rule = portcullis_common::claims::ROLE_RULE)]
    InvalidRole(String),
    /// A scope that is not an RFC 6749 scope-token.
    #[error("scope {0:?} is invalid: a scope is {rule}", rule = portcullis_common::claims::SCOPE_RULE)]
    InvalidScope(String),
    /// The password does not meet the policy.
    #[error("{}", policy_text(.0))]
    WeakPassword(PasswordProblem),
    /// The hashing semaphore is closed: the service is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// The blocking hashing task died.
    #[error("the request could not be completed")]
    HashTask,
    /// Hashing failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The database failed (or an address or username is taken: `Conflict`).
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn policy_text(p: &PasswordProblem) -> String {
    match p {
        PasswordProblem::TooShort { min } => {
            format!("the password must have at least {min} characters")
        }
        PasswordProblem::TooLong { max } => {
            format!("the password must have at most {max} characters")
        }
        PasswordProblem::Common => "this password is too common; choose another".to_string(),
    }
}

/// Whether `e` (already normalised) looks like an email address.
pub(crate) fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Trims and lower-cases an email address, then checks it.
pub(crate) fn normalize_email(raw: &str) -> Result<String, AccountError> {
    let email = raw.trim().to_lowercase();
    if valid_email(&email) {
        Ok(email)
    } else {
        Err(AccountError::InvalidEmail)
    }
}

/// Trims and lower-cases a login (email or username) the way accounts store them.
pub(crate) fn normalize_login(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Checks `pw` against the configured length policy and the list of common passwords.
pub(crate) fn check_password(app: &App, pw: &str) -> Result<(), AccountError> {
    password::check_policy(pw, app.cfg.password_min, app.cfg.password_max)
        .map_err(AccountError::WeakPassword)
}

/// Runs argon2 off the async runtime, at most `max_concurrent_hashes` at a time.
pub(crate) async fn with_hash_slot<T: Send + 'static>(
    app: &App,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AccountError> {
    let _permit = app
        .hash_slots
        .acquire()
        .await
        .map_err(|_| AccountError::ShuttingDown)?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| AccountError::HashTask)
}

/// Hashes a password with the configured argon2id parameters (through the semaphore).
pub(crate) async fn hash_password(app: &App, pw: String) -> Result<String, AccountError> {
    let params = app.password;
    Ok(with_hash_slot(app, move || password::hash(&pw, &params)).await??)
}

/// Checks a password against a stored PHC string (through the semaphore).
pub(crate) async fn verify_password(
    app: &App,
    pw: String,
    phc: String,
) -> Result<bool, AccountError> {
    with_hash_slot(app, move || password::verify(&pw, &phc)).await
}

/// Refuses roles that every gateway would refuse in a token (the same grammar, shared in
/// `portcullis_common::claims`): storing one would lock the user out of every route.
pub(crate) fn check_roles(roles: &[String]) -> Result<(), AccountError> {
    first_invalid(
        roles,
        portcullis_common::claims::valid_role,
        AccountError::InvalidRole,
    )
}

/// Refuses scopes that are not RFC 6749 scope-tokens (a space would make one scope two).
pub(crate) fn check_scopes(scopes: &[String]) -> Result<(), AccountError> {
    first_invalid(
        scopes,
        portcullis_common::claims::valid_scope,
        AccountError::InvalidScope,
    )
}

fn first_invalid(
    items: &[String],
    valid: fn(&str) -> bool,
    refusal: fn(String) -> AccountError,
) -> Result<(), AccountError> {
    match items.iter().find(|i| !valid(i)) {
        Some(bad) => Err(refusal(bad.clone())),
        None => Ok(()),
    }
}

/// An account as the admin API and the CLI create it.
#[derive(Debug, Default)]
pub struct NewAccount {
    /// Email address (trimmed, lower-cased, checked).
    pub email: Option<String>,
    /// Username (trimmed, lower-cased).
    pub username: Option<String>,
    /// Password, checked against the policy.
    pub password: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Metadata only administrators change (a JSON object).
    pub app_metadata: Option<Value>,
    /// Metadata the user may change (a JSON object).
    pub user_metadata: Option<Value>,
}

fn check_metadata<'a>(
    values: impl IntoIterator<Item = &'a Option<Value>>,
) -> Result<(), AccountError> {
    if values.into_iter().flatten().any(|m| !m.is_object()) {
        return Err(AccountError::MetadataNotObject);
    }
    Ok(())
}

/// Creates an account (admin API, CLI): email or username, an optional password.
pub async fn create(app: &App, new: NewAccount) -> Result<User, AccountError> {
    if new.email.is_none() && new.username.is_none() {
        return Err(AccountError::NoLogin);
    }
    let email = new.email.as_deref().map(normalize_email).transpose()?;
    check_roles(&new.roles)?;
    let hash = match new.password {
        None => None,
        Some(pw) => {
            check_password(app, &pw)?;
            Some(hash_password(app, pw).await?)
        }
    };
    check_metadata([&new.app_metadata, &new.user_metadata])?;
    Ok(app
        .store
        .create_user(&NewUser {
            email,
            username: new.username.as_deref().map(normalize_login),
            phone: None,
            password_hash: hash,
            roles: new.roles,
            app_metadata: new.app_metadata.unwrap_or_else(|| json!({})),
            user_metadata: new.user_metadata.unwrap_or_else(|| json!({})),
            anonymous: false,
        })
        .await?)
}

/// Changes an administrator may make to an account; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct AccountChanges {
    /// New email address (trimmed, lower-cased, checked).
    pub email: Option<String>,
    /// New username (trimmed, lower-cased).
    pub username: Option<String>,
    /// New roles.
    pub roles: Option<Vec<String>>,
    /// New admin metadata (a JSON object).
    pub app_metadata: Option<Value>,
    /// New user metadata (a JSON object).
    pub user_metadata: Option<Value>,
    /// Disable (signing the account out everywhere) or enable.
    pub disabled: Option<bool>,
}

/// Applies `changes` to account `id` and returns it as stored.
pub async fn update(app: &App, id: &str, changes: AccountChanges) -> Result<User, AccountError> {
    let mut user = app.store.get_user(id).await?;
    if let Some(e) = changes.email {
        user.email = Some(normalize_email(&e)?);
    }
    if let Some(u) = changes.username {
        user.username = Some(normalize_login(&u));
    }
    let mut cutoff = TokenCutoff::Nothing;
    if let Some(r) = changes.roles {
        check_roles(&r)?;
        cutoff = roles_cutoff(&user.roles, &r);
        user.roles = r;
    }
    check_metadata([&changes.app_metadata, &changes.user_metadata])?;
    if let Some(m) = changes.app_metadata {
        user.app_metadata = m;
    }
    if let Some(m) = changes.user_metadata {
        user.user_metadata = m;
    }
    if let Some(d) = changes.disabled {
        if d && !user.disabled {
            cutoff = TokenCutoff::Sessions("disabled");
        }
        user.disabled = d;
    }
    app.store.update_user_with(&user, cutoff, now()).await?;
    Ok(app.store.get_user(id).await?)
}

/// What replacing roles `old` by `new` ends: a removed role must not live on in tokens
/// already issued (a subject record in the revocation feed); added roles end nothing.
fn roles_cutoff(old: &[String], new: &[String]) -> TokenCutoff<'static> {
    if old.iter().all(|r| new.contains(r)) {
        TokenCutoff::Nothing
    } else {
        TokenCutoff::Tokens
    }
}

/// Replaces an account's roles.
pub async fn set_roles(app: &App, id: &str, roles: Vec<String>) -> Result<User, AccountError> {
    check_roles(&roles)?;
    let mut user = app.store.get_user(id).await?;
    let cutoff = roles_cutoff(&user.roles, &roles);
    user.roles = roles;
    app.store.update_user_with(&user, cutoff, now()).await?;
    Ok(app.store.get_user(id).await?)
}

/// Sets an account's password (checked against the policy) and signs it out everywhere.
pub async fn set_password(app: &App, id: &str, pw: String) -> Result<(), AccountError> {
    check_password(app, &pw)?;
    let mut user = app.store.get_user(id).await?;
    user.password_hash = Some(hash_password(app, pw).await?);
    app.store
        .update_user_with(&user, TokenCutoff::Sessions("password_reset"), now())
        .await?;
    Ok(())
}

/// One account by id (`NotFound` when there is none).
pub async fn get(app: &App, id: &str) -> Result<User, AccountError> {
    Ok(app.store.get_user(id).await?)
}

/// A page of accounts, oldest first.
pub async fn list(app: &App, limit: i64, offset: i64) -> Result<Vec<User>, AccountError> {
    Ok(app.store.list_users(limit, offset).await?)
}

/// Deletes an account with its sessions, refresh tokens and the API keys bound to it.
pub async fn delete(app: &App, id: &str) -> Result<(), AccountError> {
    Ok(app.store.delete_user(id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lower_cased_and_checked() {
        assert_eq!(
            normalize_email("  Bob@Example.COM\n").ok().as_deref(),
            Some("bob@example.com")
        );
        for bad in [
            "",
            "bob",
            "@example.com",
            "bob@localhost",
            "b ob@example.com",
            "a@b\u{7}.c",
        ] {
            assert!(
                matches!(normalize_email(bad), Err(AccountError::InvalidEmail)),
                "{bad:?}"
            );
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(normalize_email(&long).is_err());
    }

    #[test]
    fn policy_refusals_say_which_rule() {
        assert_eq!(
            AccountError::WeakPassword(PasswordProblem::TooShort { min: 8 }).to_string(),
            "the password must have at least 8 characters"
        );
        assert_eq!(
            AccountError::WeakPassword(PasswordProblem::Common).to_string(),
            "this password is too common; choose another"
        );
    }
}
