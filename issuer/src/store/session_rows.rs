//! Login sessions and their rotating refresh tokens: the types, row decoding, and the
//! statements run inside a transaction (by the `Store` methods and by the group commit).
//!
//! A session is what a login creates; every refresh token belongs to one. Tokens are stored
//! only as hashes and are single-use: [`Store::rotate_refresh`] retires the presented token
//! and stores its successor. Presenting a retired token again after the grace period is
//! treated as theft and revokes the whole session.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::revocations::{Append, FeedWriter};
use super::{decode_list, encode_list, StoreError};

/// Revocation reason recorded when a rotated refresh token is presented again.
pub const REASON_REFRESH_REUSE: &str = "refresh_reuse";

/// A login session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Random id; the `sid` claim.
    pub id: String,
    /// Subject the session belongs to (a user id, or a machine principal).
    pub user_id: String,
    /// Authentication methods of the login (`pwd`, `sms`, `key`, `anon`).
    pub amr: Vec<String>,
    /// Scopes granted at login (an API key's scopes), carried into refreshed tokens.
    pub scopes: Vec<String>,
    /// Roles granted at login for principals without an account row (API keys).
    pub roles: Vec<String>,
    /// Login time.
    pub created_at: i64,
    /// Last refresh; drives the idle timeout.
    pub last_used_at: i64,
    /// Absolute end of the session, whatever its activity.
    pub expires_at: i64,
    /// When it was revoked (logout, admin, refresh reuse).
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// The OAuth client that opened it: an API key's id, or `None` for the first-party
    /// client (whose id is configuration, and which sessions from before the column
    /// existed belong to).
    pub client_id: Option<String>,
}

/// A stored refresh token (by hash), as [`Store::find_refresh_token`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshToken {
    /// The session it belongs to.
    pub session_id: String,
    /// When it was issued.
    pub created_at: i64,
    /// When it was exchanged; a rotated token no longer refreshes (beyond the grace period).
    pub rotated_at: Option<i64>,
}

/// What [`Store::rotate_refresh`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token was current; it is now retired and `new_hash` is the session's token.
    Rotated {
        /// The session, with `last_used_at` bumped.
        session: Session,
    },
    /// The token had already been rotated, less than `grace` seconds ago (a client retrying,
    /// or racing itself): `new_hash` was stored as well, the caller may issue another pair.
    WithinGrace {
        /// The session, with `last_used_at` bumped.
        session: Session,
    },
    /// The token had been rotated longer ago than `grace`: presumed stolen. The session was
    /// revoked by this call (reason [`REASON_REFRESH_REUSE`]).
    Reused {
        /// The revoked session.
        session_id: String,
    },
    /// No such token.
    Unknown,
    /// The session is revoked, past its absolute expiry, or idle for longer than `idle`.
    /// Nothing was changed.
    SessionInactive,
}

/// Columns in the order [`session_from_row`] reads them.
pub(super) const SESSION_COLUMNS: &str = "id, user_id, amr, created_at, last_used_at, \
     expires_at, revoked_at, revoked_reason, scopes, roles, client_id";

/// [`SESSION_COLUMNS`] of a query where `sessions` is aliased `s`.
pub(super) const SESSION_COLUMNS_OF_S: &str =
    "s.id, s.user_id, s.amr, s.created_at, s.last_used_at, \
     s.expires_at, s.revoked_at, s.revoked_reason, s.scopes, s.roles, s.client_id";

/// How many columns [`session_from_row`] reads; the index of the first column after them.
pub(super) const SESSION_COLUMN_COUNT: usize = 11;

pub(super) fn session_from_row(row: &AnyRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: row.try_get(0)?,
        user_id: row.try_get(1)?,
        amr: decode_list(&row.try_get::<String, _>(2)?, "sessions.amr")?,
        created_at: row.try_get(3)?,
        last_used_at: row.try_get(4)?,
        expires_at: row.try_get(5)?,
        revoked_at: row.try_get(6)?,
        revoked_reason: row.try_get(7)?,
        scopes: decode_list(&row.try_get::<String, _>(8)?, "sessions.scopes")?,
        roles: decode_list(&row.try_get::<String, _>(9)?, "sessions.roles")?,
        client_id: row.try_get(10)?,
    })
}

/// Whether a session can still be refreshed at `now`. `idle <= 0` disables the idle timeout.
pub(super) fn is_active(session: &Session, now: i64, idle: i64) -> bool {
    session.revoked_at.is_none()
        && now < session.expires_at
        && (idle <= 0 || now.saturating_sub(session.last_used_at) <= idle)
}

/// Stores `new_hash` as a current token of `session` and records the use.
pub(super) async fn issue_successor(
    tx: &mut Transaction<'static, Any>,
    session: &mut Session,
    new_hash: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES ($1, $2, $3)")
        .bind(new_hash)
        .bind(&session.id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    // The session row was read in this transaction: skip a statement that would change
    // nothing (several refreshes in one second). The WHERE clause never moves last_used_at
    // backwards when replicas' clocks disagree slightly.
    if session.last_used_at < now {
        sqlx::query("UPDATE sessions SET last_used_at = $2 WHERE id = $1 AND last_used_at < $2")
            .bind(&session.id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        session.last_used_at = now;
    }
    Ok(())
}

/// Inserts a session and its first refresh token inside `tx`.
pub(super) async fn create_session_in(
    tx: &mut Transaction<'static, Any>,
    session: &Session,
    first_refresh_hash: &str,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(&session.id)
    .bind(&session.user_id)
    .bind(encode_list(&session.amr)?)
    .bind(session.created_at)
    .bind(session.last_used_at)
    .bind(session.expires_at)
    .bind(session.revoked_at)
    .bind(session.revoked_reason.as_deref())
    .bind(encode_list(&session.scopes)?)
    .bind(encode_list(&session.roles)?)
    .bind(session.client_id.as_deref())
    .execute(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES ($1, $2, $3)")
        .bind(first_refresh_hash)
        .bind(&session.id)
        .bind(session.created_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Revokes session `id` because one of its rotated refresh tokens came back, and appends its
/// revocation record (the caller signals readers after the commit).
pub(super) async fn revoke_for_reuse(
    tx: &mut Transaction<'static, Any>,
    feed: FeedWriter,
    id: &str,
    now: i64,
) -> Result<(), StoreError> {
    let revoked = sqlx::query(
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(now)
    .bind(REASON_REFRESH_REUSE)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if revoked > 0 {
        feed.append(tx, Append::Sessions(vec![id.to_owned()]), now)
            .await?;
    }
    Ok(())
}

/// [`Store::rotate_refresh`] inside a transaction that already holds SQLite's write lock
/// (`BEGIN IMMEDIATE`): nothing can change between reading and writing, so it reads first
/// and writes only what the outcome needs. It never writes before deciding, so an outcome
/// that changes nothing leaves the (possibly shared) transaction untouched.
pub(super) async fn rotate_refresh_locked(
    tx: &mut Transaction<'static, Any>,
    feed: FeedWriter,
    old_hash: &str,
    new_hash: &str,
    now: i64,
    grace: i64,
    idle: i64,
) -> Result<RotateOutcome, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS_OF_S}, r.rotated_at FROM refresh_tokens r \
         JOIN sessions s ON s.id = r.session_id WHERE r.hash = $1"
    ))
    .bind(old_hash)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(RotateOutcome::Unknown);
    };
    let mut session = session_from_row(&row)?;
    let rotated_at: Option<i64> = row.try_get(SESSION_COLUMN_COUNT)?;
    if !is_active(&session, now, idle) {
        return Ok(RotateOutcome::SessionInactive);
    }
    match rotated_at {
        None => {
            let won = sqlx::query(
                "UPDATE refresh_tokens SET rotated_at = $2 WHERE hash = $1 AND rotated_at IS NULL",
            )
            .bind(old_hash)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 1;
            if !won {
                // Impossible under the write lock; refuse rather than hand out a second pair.
                return Err(StoreError::Db(
                    "refresh token changed under the write lock".into(),
                ));
            }
            issue_successor(tx, &mut session, new_hash, now).await?;
            Ok(RotateOutcome::Rotated { session })
        }
        Some(rotated_at) if grace > 0 && now.saturating_sub(rotated_at) <= grace => {
            issue_successor(tx, &mut session, new_hash, now).await?;
            Ok(RotateOutcome::WithinGrace { session })
        }
        Some(_) => {
            revoke_for_reuse(tx, feed, &session.id, now).await?;
            Ok(RotateOutcome::Reused {
                session_id: session.id,
            })
        }
    }
}
