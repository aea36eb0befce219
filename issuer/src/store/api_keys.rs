//! API keys for machine (and user) logins. The secret is never stored: the caller passes an
//! HMAC of it and compares in constant time after looking the key up by its public prefix.

use std::fmt;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::revocations::Append;
use super::{decode_list, encode_list, Store, StoreError};

/// Revocation reason of the sessions a revoked API key had opened.
pub const REASON_API_KEY_REVOKED: &str = "api_key_revoked";

/// A stored API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Random id, used by the admin API to revoke it.
    pub id: String,
    /// Public lookup id embedded in the key the client holds; unique.
    pub prefix: String,
    /// HMAC of the secret part (the store never sees the secret).
    pub hash: String,
    /// The `sub` of tokens issued for this key: a user id or a machine principal.
    pub subject: String,
    /// Human-readable label.
    pub name: String,
    /// Scopes granted to tokens issued for this key.
    pub scopes: Vec<String>,
    /// Roles granted to tokens issued for this key.
    pub roles: Vec<String>,
    /// What the key may do beyond logging in (`introspect`, `revoke`: any token, not only
    /// its own); the store keeps the names, `auth::clients` gives them meaning.
    pub permissions: Vec<String>,
    /// After this time the key no longer logs in.
    pub expires_at: Option<i64>,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// Last successful login with it.
    pub last_used_at: Option<i64>,
    /// Creation time.
    pub created_at: i64,
}

// Hand-written so that logging a key never prints its hash.
impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .field("hash", &"<redacted>")
            .field("subject", &self.subject)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("roles", &self.roles)
            .field("permissions", &self.permissions)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("last_used_at", &self.last_used_at)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// Columns in the order [`api_key_from_row`] reads them.
const API_KEY_COLUMNS: &str = "id, prefix, hash, subject, name, scopes, roles, expires_at, \
     revoked_at, last_used_at, created_at, permissions";

fn api_key_from_row(row: &AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: row.try_get(0)?,
        prefix: row.try_get(1)?,
        hash: row.try_get(2)?,
        subject: row.try_get(3)?,
        name: row.try_get(4)?,
        scopes: decode_list(&row.try_get::<String, _>(5)?, "api_keys.scopes")?,
        roles: decode_list(&row.try_get::<String, _>(6)?, "api_keys.roles")?,
        expires_at: row.try_get(7)?,
        revoked_at: row.try_get(8)?,
        last_used_at: row.try_get(9)?,
        created_at: row.try_get(10)?,
        permissions: decode_list(&row.try_get::<String, _>(11)?, "api_keys.permissions")?,
    })
}

impl Store {
    /// Stores a key as given (the caller generates id, prefix and hash). Fails with
    /// `Conflict("prefix")` or `Conflict("id")` on a clash.
    pub async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO api_keys ({API_KEY_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&key.id)
        .bind(&key.prefix)
        .bind(&key.hash)
        .bind(&key.subject)
        .bind(&key.name)
        .bind(encode_list(&key.scopes)?)
        .bind(encode_list(&key.roles)?)
        .bind(key.expires_at)
        .bind(key.revoked_at)
        .bind(key.last_used_at)
        .bind(key.created_at)
        .bind(encode_list(&key.permissions)?)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The key with this public prefix, revoked or expired ones included (the caller decides).
    pub async fn find_api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE prefix = $1"
        ))
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(api_key_from_row)
        .transpose()
    }

    /// All keys, or those of one subject, oldest first.
    pub async fn list_api_keys(&self, subject: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let rows = match subject {
            Some(subject) => {
                sqlx::query(&format!(
                    "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE subject = $1 \
                     ORDER BY created_at, id"
                ))
                .bind(subject)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(api_key_from_row).collect()
    }

    /// Revokes a key, the live sessions it opened (reason [`REASON_API_KEY_REVOKED`]) and
    /// appends their revocation records, in one transaction. Revoking twice keeps the first
    /// revocation time; a missing key is [`StoreError::NotFound`].
    pub async fn revoke_api_key(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Sessions before the key, as `delete_user` locks them, so that the two never wait on
        // each other's rows (a deadlock on PostgreSQL). RETURNING: exactly the sessions this
        // statement revoked get a record.
        let sids: Vec<String> = sqlx::query_scalar(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
             WHERE client_id = $1 AND revoked_at IS NULL RETURNING id",
        )
        .bind(id)
        .bind(now)
        .bind(REASON_API_KEY_REVOKED)
        .fetch_all(&mut *tx)
        .await?;
        let found =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if found == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        // Last: the feed's counter row stays locked until the commit (store/revocations.rs).
        self.feed_writer()
            .append(&mut tx, Append::Sessions(sids), now)
            .await?;
        tx.commit().await?;
        self.signal_revocations();
        Ok(())
    }

    /// Records a successful login with the key.
    pub async fn touch_api_key(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.writer)
            .await
            .map_err(StoreError::from)
            .and_then(|r| match r.rows_affected() {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            })
    }
}
