//! Sliding-window rate-limit counters kept in the database, so that every issuer replica
//! counts against the same budget (SMS sends per phone, login failures per account or IP,
//! sign-ups, mails, ...).
//!
//! The algorithm is the two-window weighted estimate (the one Cloudflare and nginx-style
//! "sliding window counters" use): windows are aligned to multiples of `window` seconds since
//! the epoch; a row keeps the hits of the current window and of the one before it, and the
//! hits in the last `window` seconds are estimated as
//!
//! ```text
//! previous × (time left of the current window / window) + current
//! ```
//!
//! i.e. the previous window's hits are assumed spread evenly over it. A hit is admitted when
//! that estimate, this hit included, stays within the budget. The price of that assumption: a
//! budget spent all at once early in a window keeps counting, fading, through the next one,
//! so a wait can exceed one window (at most two, for a budget of one). Unlike fixed windows, a burst
//! just before a boundary still counts just after it (fixed windows let 2 × the budget through
//! in a moment straddling the boundary); unlike a log of every hit, it costs one row per key.
//!
//! Refused hits are not counted: a client that keeps knocking is admitted again at the
//! budget's own pace, so `Retry-After` (the exact time until the estimate lets one more hit
//! in, [`LimitCheck::retry_after`]) stays true, and one abusive client cannot push a shared
//! budget further into the future than its own admitted hits do.

use std::sync::LazyLock;

use sqlx::Row;

use super::{Store, StoreError};

/// What a counter answers: whether the hit was (or would be) admitted, and if not, when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitCheck {
    /// The hit counted (for [`Store::hit_limit`]) or would count ([`Store::peek_limit`]).
    pub admitted: bool,
    /// Seconds until one more hit would be admitted, assuming none arrives meanwhile; `0`
    /// when admitted.
    pub retry_after: i64,
}

/// Where `now` falls in the windows of one budget.
#[derive(Clone, Copy, Debug)]
struct Frame {
    /// Start of the current window.
    start: i64,
    /// Window length (seconds, > 0).
    window: i64,
    /// Seconds left in the current window (1..=window): the previous window's weight.
    left: i64,
}

impl Frame {
    fn new(window: i64, now: i64) -> Result<Frame, StoreError> {
        if window <= 0 {
            return Err(StoreError::Invalid(format!(
                "rate-limit window {window}s must be positive"
            )));
        }
        let start = now - now.rem_euclid(window);
        Ok(Frame {
            start,
            window,
            left: window - (now - start),
        })
    }

    /// The stored row's counts as seen from this frame: (previous, current). A row of an
    /// older window shifts (its current hits become the previous ones, or age out); a row
    /// stamped with a later window (a replica whose clock runs ahead) counts as current.
    /// Mirrors the `CASE`s of [`HIT_SQL`].
    fn counts(&self, row_start: i64, hits: i64, prev_hits: i64) -> (i64, i64) {
        if row_start >= self.start {
            (prev_hits, hits)
        } else if row_start >= self.start - self.window {
            (hits, 0)
        } else {
            (0, 0)
        }
    }
}

/// Whether one more hit fits: `prev × left / window + cur + 1 ≤ max`, in integers (both sides
/// multiplied by `window`). The same inequality as in [`HIT_SQL`].
fn admits(prev: i64, cur: i64, left: i64, window: i64, max: i64) -> bool {
    prev.saturating_mul(left)
        .saturating_add((cur.saturating_add(1)).saturating_mul(window))
        <= max.saturating_mul(window)
}

/// Seconds from `now` (in `frame`) until [`admits`] holds again with no hit meanwhile.
fn wait(frame: Frame, prev: i64, cur: i64, max: i64) -> i64 {
    let Frame { window, left, .. } = frame;
    if admits(prev, cur, left, window, max) {
        return 0;
    }
    // Later in this window: the previous window's weight shrinks as `left` falls. Admitted
    // once left ≤ (max - cur - 1) × window / prev.
    if cur < max && prev > 0 {
        let left_max = (max - cur - 1).saturating_mul(window) / prev;
        if left_max >= 1 {
            return left - left_max;
        }
    }
    // In the next window: this window's hits become the previous ones, none current yet.
    // The boundary is `left` seconds away; then admitted once left' ≤ (max - 1) × window / cur.
    let left_max = match cur {
        0 => window,
        _ => ((max - 1).max(0).saturating_mul(window) / cur).min(window),
    };
    if left_max >= 1 && max >= 1 {
        return left + window - left_max;
    }
    // Only once both windows have passed (a budget of one, or one lowered below the count).
    left + window
}

/// The single statement of [`Store::hit_limit`]: insert the key at one hit, or shift the row
/// to the current window and add the hit only if it fits. Every `SET` expression reads the row
/// as it was before the statement, on SQLite and PostgreSQL alike, and the row is locked for
/// the statement's duration, so concurrent hits (also from other replicas) are neither lost
/// nor admitted past the budget.
///
/// Parameters: `$1` key, `$2` current window start, `$3` expiry of a row touched now, `$4`
/// the budget, `$5` the window, `$6` seconds left in the current window.
static HIT_SQL: LazyLock<String> = LazyLock::new(|| {
    // The row's counts shifted to the current window (see `Frame::counts`).
    let cur = "(CASE WHEN rate_limits.window_start >= $2 THEN rate_limits.hits ELSE 0 END)";
    let prev = "(CASE WHEN rate_limits.window_start >= $2 THEN rate_limits.prev_hits \
                WHEN rate_limits.window_start >= $2 - $5 THEN rate_limits.hits ELSE 0 END)";
    // `admits` in SQL: 1 when the hit fits, else 0.
    let fits = format!("(CASE WHEN {prev} * $6 + ({cur} + 1) * $5 <= $4 * $5 THEN 1 ELSE 0 END)");
    format!(
        "INSERT INTO rate_limits (limit_key, window_start, hits, prev_hits, admitted, expires_at) \
         VALUES ($1, $2, CASE WHEN $4 >= 1 THEN 1 ELSE 0 END, 0, \
                 CASE WHEN $4 >= 1 THEN 1 ELSE 0 END, $3) \
         ON CONFLICT (limit_key) DO UPDATE SET \
           hits = {cur} + {fits}, \
           prev_hits = {prev}, \
           admitted = {fits}, \
           window_start = CASE WHEN rate_limits.window_start >= $2 \
                          THEN rate_limits.window_start ELSE $2 END, \
           expires_at = CASE WHEN rate_limits.expires_at >= $3 \
                        THEN rate_limits.expires_at ELSE $3 END \
         RETURNING hits, prev_hits, admitted"
    )
});

impl Store {
    /// Counts one hit on `key` if it fits in `max` hits per sliding `window_secs`, and says
    /// whether it did (and if not, when one would).
    ///
    /// One upsert statement (`HIT_SQL`), so replicas sharing the database never lose a
    /// hit or admit one too many.
    pub async fn hit_limit(
        &self,
        key: &str,
        window_secs: i64,
        max: i64,
        now: i64,
    ) -> Result<LimitCheck, StoreError> {
        let frame = Frame::new(window_secs, now)?;
        let row = sqlx::query(HIT_SQL.as_str())
            .bind(key)
            .bind(frame.start)
            // The row matters while its current window is this one or the previous one.
            .bind(frame.start.saturating_add(frame.window.saturating_mul(2)))
            .bind(max)
            .bind(frame.window)
            .bind(frame.left)
            .fetch_one(&self.pool)
            .await?;
        let (cur, prev, admitted): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        Ok(LimitCheck {
            admitted: admitted == 1,
            retry_after: if admitted == 1 {
                0
            } else {
                wait(frame, prev, cur, max)
            },
        })
    }

    /// Whether a hit on `key` would be admitted now, without counting one (a failure budget
    /// is checked before the attempt and counted only when it fails).
    pub async fn peek_limit(
        &self,
        key: &str,
        window_secs: i64,
        max: i64,
        now: i64,
    ) -> Result<LimitCheck, StoreError> {
        let frame = Frame::new(window_secs, now)?;
        let row = sqlx::query(
            "SELECT window_start, hits, prev_hits FROM rate_limits WHERE limit_key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let (prev, cur) = match row {
            None => (0, 0),
            Some(r) => frame.counts(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
        };
        let retry_after = wait(frame, prev, cur, max);
        Ok(LimitCheck {
            admitted: retry_after == 0,
            retry_after,
        })
    }

    /// Forgets the counter of `key` (e.g. after a successful login).
    pub async fn reset_limit(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM rate_limits WHERE limit_key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes counters whose windows all ended at or before `now`; returns how many. Expired
    /// rows are harmless (the next hit restarts them) but would otherwise accumulate per
    /// IP/phone.
    pub async fn purge_limits(&self, now: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM rate_limits WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A straightforward model: step second by second until `admits` holds.
    fn wait_by_steps(window: i64, now: i64, mut prev: i64, mut cur: i64, max: i64) -> i64 {
        let mut t = now;
        let mut frame = Frame::new(window, t).unwrap();
        for waited in 0..=3 * window {
            if admits(prev, cur, frame.left, window, max) {
                return waited;
            }
            t += 1;
            let next = Frame::new(window, t).unwrap();
            if next.start != frame.start {
                (prev, cur) = (cur, 0);
            }
            frame = next;
        }
        panic!("never admitted");
    }

    #[test]
    fn retry_after_is_the_exact_wait() {
        for window in [1, 2, 7, 60] {
            for max in 0..6 {
                for prev in 0..8 {
                    for cur in 0..8 {
                        for offset in 0..window {
                            let now = 1_700_000_000 - 1_700_000_000 % window + offset;
                            let frame = Frame::new(window, now).unwrap();
                            if max == 0 {
                                assert_eq!(wait(frame, prev, cur, max), frame.left + window);
                                continue;
                            }
                            assert_eq!(
                                wait(frame, prev, cur, max),
                                wait_by_steps(window, now, prev, cur, max),
                                "window {window} max {max} prev {prev} cur {cur} offset {offset}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_burst_before_the_boundary_counts_after_it() {
        // 10 per minute, all 10 in the window's last second: the first seconds of the next
        // window admit nothing; the budget comes back at its own pace.
        let frame = Frame::new(60, 119).unwrap();
        assert!(admits(0, 9, frame.left, 60, 10));
        assert!(!admits(0, 10, frame.left, 60, 10));
        let next = Frame::new(60, 120).unwrap();
        let (prev, cur) = next.counts(60, 10, 0);
        assert_eq!((prev, cur), (10, 0));
        assert!(!admits(prev, cur, next.left, 60, 10));
        assert_eq!(wait(next, prev, cur, 10), 6);
    }
}
