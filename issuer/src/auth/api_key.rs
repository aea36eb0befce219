//! API keys: creating them (admin API, CLI), checking them (constant time), and logging in
//! with one (`amr: ["key"]`, bound to the key's subject, scopes and roles).

use super::clients::Permission;
use super::sessions::{self, TokenPair};
use super::AuthError;
use crate::app::{now, App};
use crate::crypto::secrets;
use crate::store::{ApiKey, StoreError};

/// Longest subject a key may be bound to.
const MAX_SUBJECT_LEN: usize = 200;

/// A key to create.
pub struct NewApiKey<'a> {
    /// The `sub` of its tokens: a user id or a machine principal (1-200 characters).
    pub subject: &'a str,
    /// Human-readable label.
    pub name: &'a str,
    /// Scopes granted to its tokens.
    pub scopes: Vec<String>,
    /// Roles granted to its tokens.
    pub roles: Vec<String>,
    /// What it may do beyond logging in.
    pub permissions: Vec<Permission>,
    /// Lifetime in seconds (`None`: no expiry).
    pub expires_in: Option<i64>,
}

/// Creates an API key; the secret is in the answer and nowhere else, ever.
pub async fn create(app: &App, new: NewApiKey<'_>) -> Result<(ApiKey, String), AuthError> {
    // Characters, as the answer says (bytes refused 51-200 character subjects outside ASCII).
    if new.subject.trim().is_empty() || new.subject.chars().count() > MAX_SUBJECT_LEN {
        return Err(AuthError::BadRequest("`subject` must be 1-200 characters"));
    }
    crate::accounts::check_roles(&new.roles)?;
    crate::accounts::check_scopes(&new.scopes)?;
    let secret = secrets::new_api_key();
    let t = now();
    let key = ApiKey {
        id: secrets::random_id(),
        prefix: secret.prefix.clone(),
        hash: secrets::hash_api_key(&secret.full, &app.pepper),
        subject: new.subject.to_string(),
        name: new.name.to_string(),
        scopes: new.scopes,
        roles: new.roles,
        permissions: permission_names(&new.permissions),
        // Saturating: a lifetime near i64::MAX means "never", not an overflow.
        expires_at: new.expires_in.map(|s| t.saturating_add(s.max(1))),
        revoked_at: None,
        last_used_at: None,
        created_at: t,
    };
    app.store.create_api_key(&key).await?;
    Ok((key, secret.full))
}

/// The stored names of `permissions`, each once, in [`Permission::ALL`] order.
fn permission_names(permissions: &[Permission]) -> Vec<String> {
    Permission::ALL
        .into_iter()
        .filter(|p| permissions.contains(p))
        .map(|p| p.as_str().to_string())
        .collect()
}

/// The stored key for `key` when it is well-formed, matches (constant-time), and is neither
/// revoked nor expired.
pub(crate) async fn find_valid(app: &App, key: &str) -> Result<Option<ApiKey>, StoreError> {
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

/// Exchanges an API key for a token pair bound to the key's subject, scopes and roles.
pub(crate) async fn grant(app: &App, key: &str) -> Result<TokenPair, AuthError> {
    let Some(record) = find_valid(app, key).await? else {
        app.metrics.login("key", false);
        return Err(INVALID);
    };
    login(app, &record).await
}

/// Refusal of a key that does not log in (one answer for every reason: no oracle).
const INVALID: AuthError = AuthError::InvalidClient {
    scheme: super::clients::Scheme::ApiKey,
    reason: "unknown, revoked or expired API key",
};

/// Logs in with a valid key `record` (see [`find_valid`]): a session of the key's client,
/// bound to the key's subject, scopes and roles.
pub(crate) async fn login(app: &App, record: &ApiKey) -> Result<TokenPair, AuthError> {
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
        Ok(u) if u.disabled => {
            app.metrics.login("key", false);
            return Err(INVALID);
        }
        Ok(u) => u,
        Err(StoreError::NotFound) => sessions::service_user(&record.subject),
        Err(e) => return Err(e.into()),
    };
    let pair = sessions::start_as(
        app,
        Some(&record.id),
        &user,
        "key",
        &record.scopes,
        &record.roles,
    )
    .await?;
    app.metrics.login("key", true);
    Ok(pair)
}

/// Revokes an API key by id (`NotFound` when there is none).
pub async fn revoke(app: &App, id: &str) -> Result<(), AuthError> {
    Ok(app.store.revoke_api_key(id, now()).await?)
}

/// The API keys (all, or those bound to `subject`), never their secrets.
pub async fn list(app: &App, subject: Option<&str>) -> Result<Vec<ApiKey>, AuthError> {
    Ok(app.store.list_api_keys(subject).await?)
}
