//! Fixed-window rate-limit counters kept in the database, so that every issuer replica
//! counts against the same budget (SMS sends per phone, login attempts per account or IP).

use super::{Store, StoreError};

impl Store {
    /// Records one hit on `key` and returns the number of hits in the current window,
    /// this one included. Windows are aligned to multiples of `window_secs` since the epoch.
    ///
    /// One upsert statement, so concurrent hits (also from other replicas) are never lost:
    /// the row is created at 1, incremented within its window, and restarted at 1 when a
    /// later window begins. A hit stamped with an older window than the stored one (a replica
    /// whose clock lags) counts towards the stored window instead of resetting it.
    pub async fn hit_limit(
        &self,
        key: &str,
        window_secs: i64,
        now: i64,
    ) -> Result<i64, StoreError> {
        let window_start = window_start(window_secs, now)?;
        let window_end = window_start.saturating_add(window_secs);
        let hits = sqlx::query_scalar::<_, i64>(
            "INSERT INTO rate_limits (limit_key, window_start, hits, expires_at) \
             VALUES ($1, $2, 1, $3) \
             ON CONFLICT (limit_key) DO UPDATE SET \
               hits = CASE WHEN rate_limits.window_start < excluded.window_start \
                      THEN 1 ELSE rate_limits.hits + 1 END, \
               window_start = CASE WHEN rate_limits.window_start < excluded.window_start \
                      THEN excluded.window_start ELSE rate_limits.window_start END, \
               expires_at = CASE WHEN rate_limits.window_start < excluded.window_start \
                      THEN excluded.expires_at ELSE rate_limits.expires_at END \
             RETURNING hits",
        )
        .bind(key)
        .bind(window_start)
        .bind(window_end)
        .fetch_one(&self.pool)
        .await?;
        Ok(hits)
    }

    /// Hits recorded for `key` in the current window, without counting one (checks
    /// before an attempt, e.g. a locked-out account).
    pub async fn peek_limit(
        &self,
        key: &str,
        window_secs: i64,
        now: i64,
    ) -> Result<i64, StoreError> {
        let window_start = window_start(window_secs, now)?;
        let hits = sqlx::query_scalar::<_, i64>(
            "SELECT hits FROM rate_limits WHERE limit_key = $1 AND window_start >= $2",
        )
        .bind(key)
        .bind(window_start)
        .fetch_optional(&self.pool)
        .await?;
        Ok(hits.unwrap_or(0))
    }

    /// Forgets the counter of `key` (e.g. after a successful login).
    pub async fn reset_limit(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM rate_limits WHERE limit_key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes counters whose window ended at or before `now`; returns how many. Expired rows
    /// are harmless (the next hit restarts them) but would otherwise accumulate per IP/phone.
    pub async fn purge_limits(&self, now: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM rate_limits WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

/// Start of the fixed window containing `now` (windows are aligned to multiples of
/// `window_secs` since the epoch).
fn window_start(window_secs: i64, now: i64) -> Result<i64, StoreError> {
    if window_secs <= 0 {
        return Err(StoreError::Invalid(format!(
            "rate-limit window {window_secs}s must be positive"
        )));
    }
    Ok(now - now.rem_euclid(window_secs))
}
