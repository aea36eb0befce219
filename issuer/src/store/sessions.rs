//! The `Store` methods on sessions and refresh tokens (types and in-transaction statements:
//! [`super::session_rows`]).

use sqlx::Row;
use tokio::sync::oneshot;

use super::group_commit::{self, Job};
use super::revocations::Append;
use super::session_rows::{
    create_session_in, is_active, issue_successor, revoke_for_reuse, session_from_row,
    RefreshToken, RotateOutcome, Session, SESSION_COLUMNS, SESSION_COLUMNS_OF_S,
    SESSION_COLUMN_COUNT,
};
use super::{Store, StoreError};
use sqlx::{Any, Transaction};

impl Store {
    /// Stores a new session and its first refresh token (hash) atomically. Fails with
    /// `Conflict("session")` or `Conflict("refresh_token")` on a clash.
    ///
    /// On a SQLite file the write joins the next group commit (see `group_commit`).
    pub async fn create_session(
        &self,
        session: &Session,
        first_refresh_hash: &str,
    ) -> Result<(), StoreError> {
        if self.group.is_some() {
            let (reply, answer) = oneshot::channel();
            let job = Job::CreateSession {
                session: session.clone(),
                hash: first_refresh_hash.to_owned(),
                reply,
            };
            if self.enqueue(job).await.is_ok() {
                return group_commit::answer(answer).await;
            }
        }
        let mut tx = self.begin_write().await?;
        create_session_in(&mut tx, session, first_refresh_hash).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session with this id, or [`StoreError::NotFound`].
    pub async fn get_session(&self, id: &str) -> Result<Session, StoreError> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(session_from_row)
        .transpose()?
        .ok_or(StoreError::NotFound)
    }

    /// Every session of a subject, revoked and expired ones included, oldest first.
    pub async fn list_sessions(&self, user_id: &str) -> Result<Vec<Session>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(session_from_row)
        .collect()
    }

    /// Revokes one session and appends its revocation record, in one transaction. An already
    /// revoked session keeps its first time and reason (and its first record); a missing one
    /// is [`StoreError::NotFound`].
    pub async fn revoke_session(&self, id: &str, now: i64, reason: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            tx.rollback().await?;
            // Either already revoked (fine) or absent (report it).
            self.get_session(id).await?;
            return Ok(());
        }
        self.feed_writer()
            .append(&mut tx, Append::Sessions(vec![id.to_owned()]), now)
            .await?;
        tx.commit().await?;
        self.signal_revocations();
        Ok(())
    }

    /// Revokes every live session of a subject and appends the subject's revocation record
    /// (every access token issued before `now` ends), in one transaction; returns how many
    /// sessions were revoked by this call.
    pub async fn revoke_user_sessions(
        &self,
        user_id: &str,
        now: i64,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = revoke_sessions_of(&mut tx, user_id, now, reason).await?;
        self.feed_writer()
            .append(&mut tx, Append::Subject(user_id), now)
            .await?;
        tx.commit().await?;
        self.signal_revocations();
        Ok(revoked)
    }

    /// Exchanges refresh token `old_hash` for `new_hash`, atomically (one transaction):
    ///
    /// 1. The token is retired with a conditional `UPDATE … WHERE rotated_at IS NULL`, so of
    ///    concurrent callers exactly one wins, across processes too (row lock on PostgreSQL,
    ///    the database write lock on SQLite).
    /// 2. The session must be unrevoked, before `expires_at`, and used within the last `idle`
    ///    seconds (`idle <= 0`: no idle timeout); otherwise [`RotateOutcome::SessionInactive`]
    ///    and nothing changes (the token stays as it was).
    /// 3. The winner stores `new_hash` and bumps `last_used_at`: [`RotateOutcome::Rotated`].
    /// 4. A token already rotated at most `grace` seconds ago (`grace <= 0`: no grace) also
    ///    gets `new_hash` stored: [`RotateOutcome::WithinGrace`]. Rotated longer ago: the
    ///    session is revoked with reason `refresh_reuse`: [`RotateOutcome::Reused`].
    ///
    /// A `new_hash` that already exists fails with `Conflict("refresh_token")` and changes
    /// nothing.
    pub async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        now: i64,
        grace: i64,
        idle: i64,
    ) -> Result<RotateOutcome, StoreError> {
        if self.group.is_some() {
            let (reply, answer) = oneshot::channel();
            let job = Job::Rotate {
                old_hash: old_hash.to_owned(),
                new_hash: new_hash.to_owned(),
                now,
                grace,
                idle,
                reply,
            };
            if self.enqueue(job).await.is_ok() {
                return group_commit::answer(answer).await;
            }
        }
        let mut tx = self.begin_write().await?;
        // Write first: on PostgreSQL concurrent callers queue on this row's lock and the
        // losers then see the winner's committed rotated_at (READ COMMITTED re-checks the
        // WHERE clause); on SQLite the transaction already holds the write lock.
        let won = sqlx::query(
            "UPDATE refresh_tokens SET rotated_at = $2 WHERE hash = $1 AND rotated_at IS NULL",
        )
        .bind(old_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        // Token and session in one statement: every round trip here is spent holding the
        // write lock. A token whose session is gone (deleted user) is as good as unknown.
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS_OF_S}, r.rotated_at FROM refresh_tokens r \
             JOIN sessions s ON s.id = r.session_id WHERE r.hash = $1"
        ))
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(RotateOutcome::Unknown);
        };
        let mut session = session_from_row(&row)?;
        let rotated_at: Option<i64> = row.try_get(SESSION_COLUMN_COUNT)?;
        if !is_active(&session, now, idle) {
            tx.rollback().await?;
            return Ok(RotateOutcome::SessionInactive);
        }
        if won {
            issue_successor(&mut tx, &mut session, new_hash, now).await?;
            tx.commit().await?;
            return Ok(RotateOutcome::Rotated { session });
        }
        let Some(rotated_at) = rotated_at else {
            // Not won yet not rotated: the token row appeared after our UPDATE ran, which a
            // client holding the token cannot cause. Refuse rather than guess.
            tx.rollback().await?;
            return Ok(RotateOutcome::Unknown);
        };
        if grace > 0 && now.saturating_sub(rotated_at) <= grace {
            issue_successor(&mut tx, &mut session, new_hash, now).await?;
            tx.commit().await?;
            return Ok(RotateOutcome::WithinGrace { session });
        }
        revoke_for_reuse(&mut tx, self.feed_writer(), &session.id, now).await?;
        tx.commit().await?;
        self.signal_revocations();
        Ok(RotateOutcome::Reused {
            session_id: session.id,
        })
    }

    /// The session a refresh token (hash) belongs to, whether the token is current or
    /// rotated and whatever the session's state; for logout, revocation and introspection.
    pub async fn find_session_by_refresh(&self, hash: &str) -> Result<Option<Session>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS_OF_S} \
             FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(session_from_row)
        .transpose()
    }

    /// The refresh token with this hash, current or rotated; for introspection, which must
    /// report a rotated token as inactive even though its session lives on.
    pub async fn find_refresh_token(&self, hash: &str) -> Result<Option<RefreshToken>, StoreError> {
        let row = sqlx::query(
            "SELECT session_id, created_at, rotated_at FROM refresh_tokens WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(RefreshToken {
                session_id: row.try_get(0)?,
                created_at: row.try_get(1)?,
                rotated_at: row.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Deletes sessions (and their refresh tokens) that ended before `before`: expired, or
    /// revoked. Returns how many sessions were deleted. Call it periodically with a cut-off
    /// comfortably in the past, so recently revoked sessions stay visible for a while.
    pub async fn purge_sessions(&self, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let ended = "SELECT id FROM sessions WHERE expires_at < $1 OR revoked_at < $1";
        sqlx::query(&format!(
            "DELETE FROM refresh_tokens WHERE session_id IN ({ended})"
        ))
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query("DELETE FROM sessions WHERE expires_at < $1 OR revoked_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted)
    }
}

/// Inside `tx`: revokes every live session of `user_id` with `reason`; returns how many. The
/// caller appends the subject's revocation record (last, see `revocations`).
pub(super) async fn revoke_sessions_of(
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
    now: i64,
    reason: &str,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
         WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(now)
    .bind(reason)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}
