//! User accounts: password, SMS, anonymous and admin-created users.

use std::fmt;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::revocations::Append;
use super::sessions::revoke_sessions_of;
use super::{decode_json, decode_list, encode_list, new_id, now_secs, Store, StoreError};

/// What a change of account ends, besides the change itself (see [`Store::update_user_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCutoff<'a> {
    /// Nothing: tokens already issued stay valid.
    Nothing,
    /// Every access token issued before now (a subject record in the revocation feed), the
    /// sessions living on: a removed role must not survive in tokens already issued, and a
    /// refresh gets the new roles.
    Tokens,
    /// Every live session (revoked with this reason) and every access token issued before now.
    Sessions(&'a str),
}

/// A stored account.
#[derive(Clone, PartialEq)]
pub struct User {
    /// Random 128-bit hex id; the `sub` of its tokens.
    pub id: String,
    /// Lower-cased email address, unique.
    pub email: Option<String>,
    /// Login name, unique, compared exactly.
    pub username: Option<String>,
    /// E.164 phone number (normalised by the caller), unique.
    pub phone: Option<String>,
    /// Argon2id PHC string; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    /// Roles copied into the `roles` claim.
    pub roles: Vec<String>,
    /// Metadata only administrators may change (JSON).
    pub app_metadata: serde_json::Value,
    /// Metadata the user may change (JSON).
    pub user_metadata: serde_json::Value,
    /// Created by an anonymous login.
    pub anonymous: bool,
    /// When the email address was confirmed.
    pub email_confirmed_at: Option<i64>,
    /// A disabled account cannot log in or refresh.
    pub disabled: bool,
    /// Creation time.
    pub created_at: i64,
    /// Last change made through [`Store::update_user`].
    pub updated_at: i64,
}

// Hand-written so that logging a user never prints its password hash.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("username", &self.username)
            .field("phone", &self.phone)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("roles", &self.roles)
            .field("app_metadata", &self.app_metadata)
            .field("user_metadata", &self.user_metadata)
            .field("anonymous", &self.anonymous)
            .field("email_confirmed_at", &self.email_confirmed_at)
            .field("disabled", &self.disabled)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// What [`Store::create_user`] needs; the store assigns id and timestamps.
#[derive(Clone, Default)]
pub struct NewUser {
    /// Email address; stored lower-cased.
    pub email: Option<String>,
    /// Login name.
    pub username: Option<String>,
    /// E.164 phone number.
    pub phone: Option<String>,
    /// Argon2id PHC string.
    pub password_hash: Option<String>,
    /// Initial roles.
    pub roles: Vec<String>,
    /// Initial administrator metadata (JSON).
    pub app_metadata: serde_json::Value,
    /// Initial user metadata (JSON).
    pub user_metadata: serde_json::Value,
    /// Created by an anonymous login.
    pub anonymous: bool,
}

/// Columns in the order [`user_from_row`] reads them.
const USER_COLUMNS: &str = "id, email, username, phone, password_hash, roles, app_metadata, \
     user_metadata, anonymous, email_confirmed_at, disabled, created_at, updated_at";

/// Emails are unique regardless of case; storing them lower-cased lets a plain unique index
/// enforce that on both engines.
fn normalize_email(email: &str) -> String {
    email.to_lowercase()
}

/// An absent (`null`) metadata document becomes `{}`, so readers always get an object.
fn normalize_json(value: &serde_json::Value) -> serde_json::Value {
    if value.is_null() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        value.clone()
    }
}

fn user_from_row(row: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        id: row.try_get(0)?,
        email: row.try_get(1)?,
        username: row.try_get(2)?,
        phone: row.try_get(3)?,
        password_hash: row.try_get(4)?,
        roles: decode_list(&row.try_get::<String, _>(5)?, "users.roles")?,
        app_metadata: decode_json(&row.try_get::<String, _>(6)?, "users.app_metadata")?,
        user_metadata: decode_json(&row.try_get::<String, _>(7)?, "users.user_metadata")?,
        anonymous: row.try_get::<i64, _>(8)? != 0,
        email_confirmed_at: row.try_get(9)?,
        disabled: row.try_get::<i64, _>(10)? != 0,
        created_at: row.try_get(11)?,
        updated_at: row.try_get(12)?,
    })
}

impl Store {
    /// Creates a user. Fails with `Conflict("email" | "username" | "phone")` when the value is
    /// taken (emails compared case-insensitively).
    pub async fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
        let now = now_secs();
        let user = User {
            id: new_id(),
            email: new.email.as_deref().map(normalize_email),
            username: new.username.clone(),
            phone: new.phone.clone(),
            password_hash: new.password_hash.clone(),
            roles: new.roles.clone(),
            app_metadata: normalize_json(&new.app_metadata),
            user_metadata: normalize_json(&new.user_metadata),
            anonymous: new.anonymous,
            email_confirmed_at: None,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        sqlx::query(&format!(
            "INSERT INTO users ({USER_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&user.id)
        .bind(user.email.as_deref())
        .bind(user.username.as_deref())
        .bind(user.phone.as_deref())
        .bind(user.password_hash.as_deref())
        .bind(encode_list(&user.roles)?)
        .bind(user.app_metadata.to_string())
        .bind(user.user_metadata.to_string())
        .bind(i64::from(user.anonymous))
        .bind(user.email_confirmed_at)
        .bind(i64::from(user.disabled))
        .bind(user.created_at)
        .bind(user.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(user)
    }

    /// The user with this id, or [`StoreError::NotFound`].
    pub async fn get_user(&self, id: &str) -> Result<User, StoreError> {
        self.find_user_where("id", id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// The user with this email address, compared case-insensitively.
    pub async fn find_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.find_user_where("email", &normalize_email(email)).await
    }

    /// The user with exactly this username.
    pub async fn find_user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.find_user_where("username", username).await
    }

    /// The user with exactly this phone number (pass it in E.164).
    pub async fn find_user_by_phone(&self, phone: &str) -> Result<Option<User>, StoreError> {
        self.find_user_where("phone", phone).await
    }

    /// `column` is one of the fixed names above, never caller input.
    async fn find_user_where(&self, column: &str, value: &str) -> Result<Option<User>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {column} = $1"
        ))
        .bind(value)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    /// A page of users, oldest first (stable order, so offsets page reliably).
    pub async fn list_users(&self, limit: i64, offset: i64) -> Result<Vec<User>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2"
        ))
        .bind(limit.max(0))
        .bind(offset.max(0))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }

    /// Saves every mutable field of `user` (email, username, phone, password hash, roles,
    /// metadata, anonymous, disabled, email confirmation) and bumps `updated_at`. Returns the
    /// user as stored. `id` and `created_at` are never changed.
    pub async fn update_user(&self, user: &User) -> Result<User, StoreError> {
        self.update_user_with(user, TokenCutoff::Nothing, now_secs())
            .await
    }

    /// [`Store::update_user`], and in the same transaction ends what `cutoff` says at `now`
    /// (revoking sessions, appending the subject's revocation record).
    pub async fn update_user_with(
        &self,
        user: &User,
        cutoff: TokenCutoff<'_>,
        now: i64,
    ) -> Result<User, StoreError> {
        let mut saved = user.clone();
        saved.email = user.email.as_deref().map(normalize_email);
        saved.app_metadata = normalize_json(&user.app_metadata);
        saved.user_metadata = normalize_json(&user.user_metadata);
        saved.updated_at = now;
        let mut tx = self.begin_write().await?;
        // Sessions before the user row, in the order `delete_user` locks them, so that the two
        // never wait on each other's rows (a deadlock on PostgreSQL).
        if let TokenCutoff::Sessions(reason) = cutoff {
            revoke_sessions_of(&mut tx, &saved.id, now, reason).await?;
        }
        let result = sqlx::query(
            "UPDATE users SET email = $2, username = $3, phone = $4, password_hash = $5, \
             roles = $6, app_metadata = $7, user_metadata = $8, anonymous = $9, \
             email_confirmed_at = $10, disabled = $11, updated_at = $12 WHERE id = $1",
        )
        .bind(&saved.id)
        .bind(saved.email.as_deref())
        .bind(saved.username.as_deref())
        .bind(saved.phone.as_deref())
        .bind(saved.password_hash.as_deref())
        .bind(encode_list(&saved.roles)?)
        .bind(saved.app_metadata.to_string())
        .bind(saved.user_metadata.to_string())
        .bind(i64::from(saved.anonymous))
        .bind(saved.email_confirmed_at)
        .bind(i64::from(saved.disabled))
        .bind(saved.updated_at)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        let appended = cutoff != TokenCutoff::Nothing;
        if appended {
            self.feed_writer()
                .append(&mut tx, Append::Subject(&saved.id), now)
                .await?;
        }
        tx.commit().await?;
        if appended {
            self.signal_revocations();
        }
        Ok(saved)
    }

    /// Deletes a user together with its sessions, their refresh tokens and the API keys whose
    /// subject is the user, and appends the subject's revocation record (its tokens end), in
    /// one transaction. [`StoreError::NotFound`] leaves everything.
    pub async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM refresh_tokens WHERE session_id IN \
             (SELECT id FROM sessions WHERE user_id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM api_keys WHERE subject = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        self.feed_writer()
            .append(&mut tx, Append::Subject(id), now_secs())
            .await?;
        tx.commit().await?;
        self.signal_revocations();
        Ok(())
    }
}
