//! Signing keys and the lock that keeps key rotation from racing between replicas.
//!
//! Rotation reads the key set, decides, and writes (`next` → `active` → `retired` → deleted).
//! Two replicas doing that at once could both promote a key or both create one, so rotation
//! (and first-start creation) goes through [`Store::lock_signing_keys`] or
//! [`Store::with_key_lock`]: one transaction that on PostgreSQL first takes
//! `pg_advisory_xact_lock(KEY_LOCK_ID)` and on SQLite is `BEGIN IMMEDIATE` (the database write
//! lock). Either lock is released by commit or rollback, so a crashed holder cannot wedge it.
//! The plain `Store` methods below do not lock; they suit reads and administrative one-offs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row, Transaction};

use super::{Backend, Store, StoreError};

/// The states a key moves through: published before it signs (`next`), signing (`active`),
/// published until its tokens expire (`retired`).
pub const KEY_STATES: [&str; 3] = ["next", "active", "retired"];

/// Advisory-lock key for signing-key rotation on PostgreSQL ("portkeys" in ASCII): a fixed
/// number every replica agrees on and that nothing else in the database uses.
const KEY_LOCK_ID: i64 = 0x706f_7274_6b65_7973;

/// A signing key as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// Key id (RFC 7638 thumbprint), the JWT `kid`.
    pub kid: String,
    /// JOSE algorithm (`ES256`, `RS256`, `EdDSA`).
    pub alg: String,
    /// Private key as opaque text (PEM or JWK), possibly encrypted by the caller.
    pub private_key: String,
    /// Public JWK (JSON text) as published in the JWKS.
    pub public_jwk: String,
    /// One of [`KEY_STATES`].
    pub state: String,
    /// Creation time.
    pub created_at: i64,
    /// When the key may start signing (it is published from creation).
    pub activates_at: i64,
    /// When it stopped signing.
    pub retired_at: Option<i64>,
    /// When it may be removed from the JWKS and deleted.
    pub remove_after: Option<i64>,
}

// Hand-written so that logging a key never prints its private part.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private_key", &"<redacted>")
            .field("public_jwk", &self.public_jwk)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .field("retired_at", &self.retired_at)
            .field("remove_after", &self.remove_after)
            .finish()
    }
}

/// The future a [`Store::with_key_lock`] closure returns.
pub type KeyFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 't>>;

/// An open key-rotation transaction holding the rotation lock (see the module docs).
///
/// Changes become visible on [`KeyTx::commit`]; dropping it rolls them back and releases the
/// lock. While it is open, use only its methods: other `Store` calls would wait for the lock
/// (and on an in-memory SQLite database, for the only connection).
pub struct KeyTx {
    tx: Transaction<'static, Any>,
}

impl fmt::Debug for KeyTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyTx")
    }
}

/// Columns in the order [`key_from_row`] reads them.
const KEY_COLUMNS: &str = "kid, alg, private_key, public_jwk, state, created_at, activates_at, \
     retired_at, remove_after";

fn key_from_row(row: &AnyRow) -> Result<SigningKey, StoreError> {
    Ok(SigningKey {
        kid: row.try_get(0)?,
        alg: row.try_get(1)?,
        private_key: row.try_get(2)?,
        public_jwk: row.try_get(3)?,
        state: row.try_get(4)?,
        created_at: row.try_get(5)?,
        activates_at: row.try_get(6)?,
        retired_at: row.try_get(7)?,
        remove_after: row.try_get(8)?,
    })
}

fn check_state(state: &str) -> Result<(), StoreError> {
    if KEY_STATES.contains(&state) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("signing key state {state:?}")))
    }
}

// The operations, written once for the pool (unlocked) and for a `KeyTx`.

async fn list_keys<'e, E>(exec: E) -> Result<Vec<SigningKey>, StoreError>
where
    E: Executor<'e, Database = Any>,
{
    sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid"
    ))
    .fetch_all(exec)
    .await?
    .iter()
    .map(key_from_row)
    .collect()
}

async fn insert_key<'e, E>(exec: E, key: &SigningKey) -> Result<(), StoreError>
where
    E: Executor<'e, Database = Any>,
{
    check_state(&key.state)?;
    sqlx::query(&format!(
        "INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(&key.kid)
    .bind(&key.alg)
    .bind(&key.private_key)
    .bind(&key.public_jwk)
    .bind(&key.state)
    .bind(key.created_at)
    .bind(key.activates_at)
    .bind(key.retired_at)
    .bind(key.remove_after)
    .execute(exec)
    .await?;
    Ok(())
}

async fn update_key_state<'e, E>(
    exec: E,
    kid: &str,
    state: &str,
    retired_at: Option<i64>,
    remove_after: Option<i64>,
) -> Result<(), StoreError>
where
    E: Executor<'e, Database = Any>,
{
    check_state(state)?;
    let result = sqlx::query(
        "UPDATE signing_keys SET state = $2, retired_at = $3, remove_after = $4 WHERE kid = $1",
    )
    .bind(kid)
    .bind(state)
    .bind(retired_at)
    .bind(remove_after)
    .execute(exec)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

async fn delete_key<'e, E>(exec: E, kid: &str) -> Result<(), StoreError>
where
    E: Executor<'e, Database = Any>,
{
    let result = sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
        .bind(kid)
        .execute(exec)
        .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

impl KeyTx {
    /// Every key, oldest first, as of inside the lock.
    pub async fn list_signing_keys(&mut self) -> Result<Vec<SigningKey>, StoreError> {
        list_keys(&mut *self.tx).await
    }

    /// Adds a key; `Conflict("kid")` if the kid exists.
    pub async fn insert_signing_key(&mut self, key: &SigningKey) -> Result<(), StoreError> {
        insert_key(&mut *self.tx, key).await
    }

    /// Sets a key's state and retirement times; [`StoreError::NotFound`] if absent.
    pub async fn update_signing_key_state(
        &mut self,
        kid: &str,
        state: &str,
        retired_at: Option<i64>,
        remove_after: Option<i64>,
    ) -> Result<(), StoreError> {
        update_key_state(&mut *self.tx, kid, state, retired_at, remove_after).await
    }

    /// Deletes a key; [`StoreError::NotFound`] if absent.
    pub async fn delete_signing_key(&mut self, kid: &str) -> Result<(), StoreError> {
        delete_key(&mut *self.tx, kid).await
    }

    /// Makes the changes visible and releases the lock.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Discards the changes and releases the lock (dropping the `KeyTx` does the same).
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

impl Store {
    /// Opens a key-rotation transaction holding the rotation lock, waiting for another
    /// replica's rotation to finish first. See [`KeyTx`].
    pub async fn lock_signing_keys(&self) -> Result<KeyTx, StoreError> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            // Wrapped in COUNT(*) because the Any driver cannot decode the `void` that
            // pg_advisory_xact_lock returns; the volatile call is still evaluated.
            sqlx::query("SELECT COUNT(*) FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                .bind(KEY_LOCK_ID)
                .fetch_one(&mut *tx)
                .await?;
        }
        Ok(KeyTx { tx })
    }

    /// Runs `f` inside a key-rotation transaction and commits if it returns `Ok` (rolls back
    /// otherwise). The closure must own what it captures, e.g.
    /// `store.with_key_lock(move |keys| Box::pin(async move { keys.list_signing_keys().await }))`.
    /// For borrowing callers, [`Store::lock_signing_keys`] is the same primitive unwrapped.
    pub async fn with_key_lock<F, T>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'t> FnOnce(&'t mut KeyTx) -> KeyFuture<'t, T>,
    {
        let mut keys = self.lock_signing_keys().await?;
        let value = f(&mut keys).await?;
        keys.commit().await?;
        Ok(value)
    }

    /// Adds a key without taking the rotation lock; `Conflict("kid")` if the kid exists.
    pub async fn insert_signing_key(&self, key: &SigningKey) -> Result<(), StoreError> {
        insert_key(&self.pool, key).await
    }

    /// Every key, oldest first (for the JWKS and `keys list`).
    pub async fn list_signing_keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        list_keys(&self.pool).await
    }

    /// Sets a key's state and retirement times without taking the rotation lock.
    pub async fn update_signing_key_state(
        &self,
        kid: &str,
        state: &str,
        retired_at: Option<i64>,
        remove_after: Option<i64>,
    ) -> Result<(), StoreError> {
        update_key_state(&self.pool, kid, state, retired_at, remove_after).await
    }

    /// Deletes a key without taking the rotation lock; [`StoreError::NotFound`] if absent.
    pub async fn delete_signing_key(&self, kid: &str) -> Result<(), StoreError> {
        delete_key(&self.pool, kid).await
    }
}
