//! The revocation feed's records: appended inside the transaction of the state change they
//! describe, read by sequence number, pruned once no access token they could affect is alive.
//!
//! Sequence numbers and visibility: a record's `seq` comes from the single row of
//! `revocation_feed` (`UPDATE … SET last_seq = last_seq + n RETURNING last_seq`), not from a
//! PostgreSQL sequence. A sequence hands out numbers at `nextval()` time, so with two writers
//! a reader can see seq 11 committed before seq 10, move its cursor past 10 and never see it.
//! The counter row's lock is held until the writing transaction ends, so the next writer gets
//! its number only after the previous one has committed (or rolled back, which releases the
//! number for reuse): numbers become visible in order, without gaps. Readers read `last_seq`
//! first and then only records up to it, which are all committed. The cost is that writes
//! that append a record serialise on one row across replicas; they are rare (logouts,
//! revocations, account changes), and the append is the last statement before the commit, so
//! the lock is held for one round trip. On SQLite the database write lock already serialises.
//!
//! Pruning deletes a prefix of the sequence (everything up to the first record still relevant)
//! and moves `pruned_through` there, so "what is retained" is exactly the records after
//! `pruned_through`, and a cursor below it gets a snapshot of them.
//!
//! Wake-up: every commit that appended records signals [`Store::revocation_signal`]
//! subscribers in this process; on PostgreSQL the transaction also sends `NOTIFY` (delivered
//! at commit, only if it commits), which [`Store::listen_revocations`] turns into the same
//! signal on every other replica.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{Backend, Store, StoreError};

/// The PostgreSQL notification channel of new records.
const CHANNEL: &str = "portcullis_revocations";

/// What a revocation record revokes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevocationKind {
    /// Every token of one session.
    Session {
        /// The session id (`sid` claim).
        sid: String,
    },
    /// Every token of a subject issued before `not_before`.
    Subject {
        /// The subject (`sub` claim).
        sub: String,
        /// Tokens whose `iat` is earlier than this are revoked.
        not_before: i64,
    },
}

/// One record of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Position in the feed; increases by one per record.
    pub seq: i64,
    /// What it revokes.
    pub kind: RevocationKind,
    /// When every access token it could affect has expired.
    pub relevant_until: i64,
}

/// A page of the feed, as [`Store::revocations_after`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationPage {
    /// Records in sequence order, only those still relevant.
    pub records: Vec<Revocation>,
    /// The cursor to read on from.
    pub next: i64,
    /// The cursor was older than what is retained (or absent, or ahead of the feed): these
    /// records start a full snapshot of the still-relevant records, to replace what the reader
    /// held.
    pub snapshot: bool,
    /// More records follow `next` already (the page was full).
    pub more: bool,
}

/// The records one state change appends (all with the same event time).
pub(super) enum Append<'a> {
    /// Session records for these sids.
    Sessions(Vec<String>),
    /// One subject record with `not_before` = the event time.
    Subject(&'a str),
}

impl Store {
    /// A receiver that sees a change whenever records were appended (by this process, or by
    /// another replica once [`Store::listen_revocations`] runs). The current value counts as
    /// seen: subscribe before reading the feed, then wait for `changed()`.
    pub fn revocation_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocation_signal.subscribe()
    }

    /// Wakes the readers waiting for new records (after a commit that appended some).
    pub(super) fn signal_revocations(&self) {
        self.revocation_signal
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// What appending needs to know about this store (see [`FeedWriter`]).
    pub(super) fn feed_writer(&self) -> FeedWriter {
        FeedWriter {
            backend: self.backend,
            window: self.revocation_window,
        }
    }

    /// The records after cursor `after`, at most `limit` of them, read at `now`.
    ///
    /// `after` of `None`, below what is retained, or beyond the last record (a database
    /// that was reset) starts a snapshot: every still-relevant record, `snapshot: true`.
    pub async fn revocations_after(
        &self,
        after: Option<i64>,
        now: i64,
        limit: i64,
    ) -> Result<RevocationPage, StoreError> {
        // The counter first: every record up to `last_seq` is committed (module docs).
        let row = sqlx::query("SELECT last_seq, pruned_through FROM revocation_feed WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let last: i64 = row.try_get(0)?;
        let pruned: i64 = row.try_get(1)?;
        let (from, snapshot) = match after {
            Some(a) if a >= pruned && a <= last => (a, false),
            _ => (pruned, true),
        };
        let limit = limit.max(1);
        // One row more than asked: whether more follow, without a read that would wait.
        let rows = sqlx::query(
            "SELECT seq, kind, target, not_before, relevant_until FROM revocations \
             WHERE seq > $1 AND seq <= $2 AND relevant_until > $3 ORDER BY seq LIMIT $4",
        )
        .bind(from)
        .bind(last)
        .bind(now)
        .bind(limit.saturating_add(1))
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() as i64 > limit;
        let records = rows
            .iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(revocation_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match records.last() {
            Some(r) if more => r.seq,
            _ => last,
        };
        Ok(RevocationPage {
            records,
            next,
            snapshot,
            more,
        })
    }

    /// Deletes the records that no longer matter at `now` (`relevant_until <= now`, as
    /// reads count them): the prefix of the sequence up to the first record still relevant.
    /// Returns how many were deleted.
    pub async fn purge_revocations(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let last: i64 = sqlx::query_scalar("SELECT last_seq FROM revocation_feed WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let first_relevant: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(seq) FROM revocations WHERE relevant_until > $1 AND seq <= $2",
        )
        .bind(now)
        .bind(last)
        .fetch_one(&mut *tx)
        .await?;
        let cut = first_relevant.map_or(last, |s| s - 1);
        let deleted = sqlx::query("DELETE FROM revocations WHERE seq <= $1")
            .bind(cut)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE revocation_feed SET pruned_through = $1 WHERE id = 1 AND pruned_through < $1",
        )
        .bind(cut)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// Turns PostgreSQL notifications of records appended by other replicas into
    /// [`Store::revocation_signal`] changes; runs until the process ends. Does nothing on
    /// SQLite (replicas sharing a SQLite file rely on the readers' periodic re-check).
    ///
    /// A notification lost while the listening connection was down only delays readers: the
    /// signal fires on every reconnection, and readers re-check the table periodically anyway.
    pub async fn listen_revocations(&self, database_url: &str) {
        if self.backend != Backend::Postgres {
            return;
        }
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect(database_url).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("revocation feed: cannot connect to listen: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!("revocation feed: LISTEN failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Whatever was appended while we were not listening.
            self.signal_revocations();
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => self.signal_revocations(),
                    // The connection dropped; the next try_recv reconnects and listens again.
                    Ok(None) => self.signal_revocations(),
                    Err(e) => {
                        tracing::warn!("revocation feed: listening failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }
}

/// Appends records inside a caller's transaction: the store's settings, copied out so that
/// the statements run by the group commit (which hold a transaction, not a `Store`) append
/// the same way.
#[derive(Clone, Copy, Debug)]
pub(super) struct FeedWriter {
    backend: Backend,
    /// Seconds after its event that a record stays relevant.
    window: i64,
}

impl FeedWriter {
    /// Appends the records of one event at `now` inside `tx`; the caller commits, then calls
    /// [`Store::signal_revocations`]. Nothing to append is a no-op (no counter lock taken).
    pub(super) async fn append(
        self,
        tx: &mut Transaction<'static, Any>,
        what: Append<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        let (kind, targets, not_before): (&str, Vec<&str>, Option<i64>) = match what {
            Append::Sessions(ref sids) => {
                ("session", sids.iter().map(String::as_str).collect(), None)
            }
            Append::Subject(sub) => ("subject", vec![sub], Some(now)),
        };
        if targets.is_empty() {
            return Ok(());
        }
        let n = targets.len() as i64;
        // Takes the counter row's lock until the transaction ends (module docs).
        let last: i64 = sqlx::query_scalar(
            "UPDATE revocation_feed SET last_seq = last_seq + $1 WHERE id = 1 RETURNING last_seq",
        )
        .bind(n)
        .fetch_one(&mut **tx)
        .await?;
        let relevant_until = now.saturating_add(self.window);
        for (i, target) in targets.iter().enumerate() {
            sqlx::query(
            "INSERT INTO revocations (seq, kind, target, not_before, created_at, relevant_until) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(last - n + 1 + i as i64)
        .bind(kind)
        .bind(*target)
        .bind(not_before)
        .bind(now)
        .bind(relevant_until)
        .execute(&mut **tx)
        .await?;
        }
        if self.backend == Backend::Postgres {
            // Transactional: delivered to the listeners at commit, never for a rollback.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

fn revocation_from_row(row: &AnyRow) -> Result<Revocation, StoreError> {
    let kind: String = row.try_get(1)?;
    let target: String = row.try_get(2)?;
    let kind = match kind.as_str() {
        "session" => RevocationKind::Session { sid: target },
        "subject" => RevocationKind::Subject {
            sub: target,
            not_before: row
                .try_get::<Option<i64>, _>(3)?
                .ok_or_else(|| StoreError::Corrupt("revocations.not_before".into()))?,
        },
        other => return Err(StoreError::Corrupt(format!("revocations.kind {other:?}"))),
    };
    Ok(Revocation {
        seq: row.try_get(0)?,
        kind,
        relevant_until: row.try_get(4)?,
    })
}
