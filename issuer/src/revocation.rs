//! The revocation feed: what gateways read (`GET /v1/revocations`) to refuse, within a second,
//! the access tokens of sessions and subjects that ended before the tokens expire.
//!
//! Every event that ends a session or a subject's tokens appends a record in the same
//! transaction as the change itself (`store/revocations.rs`): logout, refresh-token reuse,
//! admin session revocation and API-key revocation (the sessions the key opened) append a
//! `session` record; a user disabled or deleted, a password reset or changed, a role removed
//! and an admin "revoke all sessions" append a `subject` record whose `not_before` is the
//! event time (tokens with an earlier `iat` are revoked).
//!
//! Reading is a long poll: a read with nothing new waits, up to `revocation_feed.max_wait`,
//! for a record to be appended, then answers at once. Chosen over server-sent events because
//! each answer carries its cursor explicitly (a reader resumes exactly where it was, on any
//! replica), it is one plain JSON request that any proxy, load balancer and HTTP client
//! handles, and an idle connection is never held longer than proxies' usual idle timeouts.
//!
//! A waiting read wakes on the store's signal (in-process commits; on PostgreSQL also other
//! replicas' commits, through `LISTEN/NOTIFY`), and re-checks the database every
//! [`RECHECK`] whatever happens, so a lost notification (or replicas sharing a SQLite file)
//! only delays a record by that much, never loses it.

use std::time::Duration;

use portcullis_common::time::unix_now;
use tokio::sync::watch;

use crate::crypto::secrets;
use crate::store::{RevocationPage, Store, StoreError};

/// Most records in one answer; a reader that gets `more: true` reads on at once.
pub const PAGE_SIZE: i64 = 1000;

/// A waiting read looks at the database at least this often, signal or not.
pub const RECHECK: Duration = Duration::from_secs(2);

/// How long after its event a record matters: the access tokens it affects live at most
/// `access_ttl` more, and gateways accept them `leeway` longer (`revocation_feed.leeway`).
pub fn relevance_window(access_ttl: Duration, leeway: Duration) -> i64 {
    i64::try_from(access_ttl.saturating_add(leeway).as_secs()).unwrap_or(i64::MAX)
}

/// Why a read of the feed was refused.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// No feed credential, or a wrong one.
    #[error("the revocation feed needs the feed credential (revocation_feed.token_file)")]
    Unauthorized,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The feed's settings and state in a serving replica.
#[derive(Debug)]
pub struct Feed {
    /// SHA-256 of the feed credential (compared in constant time).
    token_hash: String,
    /// Longest wait of a read with nothing new.
    max_wait: Duration,
    /// Set when the replica shuts down: waiting reads answer at once, so that a graceful
    /// shutdown does not wait out every gateway's long poll.
    stopping: watch::Sender<bool>,
}

impl Feed {
    /// A feed readable with `token`, whose reads wait at most `max_wait`.
    pub fn new(token: &str, max_wait: Duration) -> Feed {
        Feed {
            token_hash: secrets::hash_token(token),
            max_wait,
            stopping: watch::Sender::new(false),
        }
    }

    /// Whether `presented` is the feed credential.
    pub fn accepts(&self, presented: &str) -> bool {
        secrets::constant_time_eq(&secrets::hash_token(presented), &self.token_hash)
    }

    /// Ends every waiting read now, and makes later reads answer without waiting.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// The records after cursor `after` (see [`Store::revocations_after`]) for a reader
    /// presenting `credential`. With nothing new, waits up to `max_wait` (or the reader's
    /// `wait`, if shorter) for a record.
    pub async fn read(
        &self,
        store: &Store,
        credential: Option<&str>,
        after: Option<i64>,
        wait: Option<Duration>,
    ) -> Result<RevocationPage, FeedError> {
        if !credential.is_some_and(|c| self.accepts(c)) {
            return Err(FeedError::Unauthorized);
        }
        // Subscribed before the first read: a commit between that read and the wait below
        // still counts as a change.
        let mut appended = store.revocation_signal();
        let mut stopping = self.stopping.subscribe();
        let wait = wait.map_or(self.max_wait, |w| w.min(self.max_wait));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let page = store
                .revocations_after(after, unix_now(), PAGE_SIZE)
                .await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !page.records.is_empty() || page.snapshot || left.is_zero() || *stopping.borrow() {
                return Ok(page);
            }
            tokio::select! {
                changed = appended.changed() => {
                    // The store is gone (cannot happen while we hold it): fall back to polling.
                    if changed.is_err() {
                        tokio::time::sleep(left.min(RECHECK)).await;
                    }
                }
                _ = stopping.changed() => {}
                _ = tokio::time::sleep(left.min(RECHECK)) => {}
            }
        }
    }
}

/// Starts the task that relays other replicas' appends (PostgreSQL `LISTEN`) to this
/// replica's waiting reads; nothing to do on SQLite.
pub fn spawn_listener(store: Store, database_url: String) {
    tokio::spawn(async move { store.listen_revocations(&database_url).await });
}
