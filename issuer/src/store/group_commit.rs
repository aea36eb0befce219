//! Group commit of the hot writes on a SQLite file: new sessions (every login) and refresh
//! rotations that arrive together share one `BEGIN IMMEDIATE … COMMIT`.
//!
//! SQLite commits one transaction at a time, and with `synchronous = FULL` each commit waits
//! for an fsync of the WAL; a transaction per login therefore caps logins at the disk's fsync
//! rate (~1,300/s on the benchmark machine). Grouping keeps the durability of every write —
//! a caller is answered only after the commit that holds its write — and pays one fsync per
//! group instead of per request.
//!
//! One task owns the queue and runs the groups. Callers wait on a oneshot channel, so a
//! caller that is dropped (client gone) changes nothing: its write is committed or not with
//! its group, and no transaction is ever left open by a cancellation. When any statement of a
//! group fails (a clashing id, a full disk), the group is rolled back and its jobs are run
//! again one by one, so that each caller gets its own outcome.
//!
//! PostgreSQL does not need this (concurrent transactions commit in parallel and the server
//! groups WAL flushes itself), nor does the in-memory database of the tests.

use sqlx::{Any, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::revocations::FeedWriter;
use super::session_rows::{create_session_in, rotate_refresh_locked};
use super::{RotateOutcome, Session, Store, StoreError};

/// Most jobs in one transaction: bounds the time the write lock is held for one group.
const MAX_GROUP: usize = 128;

/// Queued jobs beyond which callers wait to enqueue (back-pressure, not an error).
const QUEUE_DEPTH: usize = 1024;

/// A write waiting for its group.
pub(super) enum Job {
    /// [`Store::create_session`].
    CreateSession {
        session: Session,
        hash: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// [`Store::rotate_refresh`].
    Rotate {
        old_hash: String,
        new_hash: String,
        now: i64,
        grace: i64,
        idle: i64,
        reply: oneshot::Sender<Result<RotateOutcome, StoreError>>,
    },
}

/// What a job produced inside the group, sent once the group has committed.
// One short-lived value per job, moved into its reply: boxing the outcome would add an
// allocation per refresh and save nothing.
#[allow(clippy::large_enum_variant)]
enum Done {
    Created,
    Rotated(RotateOutcome),
}

/// Starts the group-commit task on `direct` (a store without a queue, so that the task holds
/// no sender and ends when the last [`Store`] clone is dropped); returns the queue.
pub(super) fn start(direct: Store) -> mpsc::Sender<Job> {
    let (queue, jobs) = mpsc::channel(QUEUE_DEPTH);
    tokio::spawn(run(direct, jobs));
    queue
}

async fn run(store: Store, mut queue: mpsc::Receiver<Job>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        let tx = match store.begin_write().await {
            Ok(tx) => tx,
            Err(e) => {
                // No transaction (the writer busy past its timeout, the database gone): every
                // job would fail the same way, one timeout after another; answer them now.
                let why = e.to_string();
                for job in group.drain(..) {
                    fail(job, &why);
                }
                continue;
            }
        };
        match apply(tx, store.feed_writer(), &group).await {
            Ok(done) => {
                // A detected reuse appended a revocation record: wake the feed's readers.
                if done
                    .iter()
                    .any(|d| matches!(d, Done::Rotated(RotateOutcome::Reused { .. })))
                {
                    store.signal_revocations();
                }
                for (job, done) in group.drain(..).zip(done) {
                    match (job, done) {
                        (Job::CreateSession { reply, .. }, Done::Created) => {
                            let _ = reply.send(Ok(()));
                        }
                        (Job::Rotate { reply, .. }, Done::Rotated(outcome)) => {
                            let _ = reply.send(Ok(outcome));
                        }
                        // apply() answers each job with its own kind.
                        (job, _) => fail(job, "group commit: mismatched result"),
                    }
                }
            }
            Err(e) => {
                // Nothing of the group was committed: give every job its own transaction,
                // hence its own outcome (the failing one gets the error).
                tracing::debug!(
                    "group commit of {} writes failed ({e}), retrying one by one",
                    group.len()
                );
                for job in group.drain(..) {
                    one_by_one(&store, job).await;
                }
            }
        }
    }
}

/// Runs a whole group in one transaction; on error everything is rolled back (the
/// transaction is dropped uncommitted).
async fn apply(
    mut tx: Transaction<'static, Any>,
    feed: FeedWriter,
    group: &[Job],
) -> Result<Vec<Done>, StoreError> {
    let mut done = Vec::with_capacity(group.len());
    for job in group {
        done.push(match job {
            Job::CreateSession { session, hash, .. } => {
                create_session_in(&mut tx, session, hash).await?;
                Done::Created
            }
            Job::Rotate {
                old_hash,
                new_hash,
                now,
                grace,
                idle,
                ..
            } => Done::Rotated(
                rotate_refresh_locked(&mut tx, feed, old_hash, new_hash, *now, *grace, *idle)
                    .await?,
            ),
        });
    }
    tx.commit().await?;
    Ok(done)
}

/// A job in its own transaction, through the store's direct path.
async fn one_by_one(store: &Store, job: Job) {
    match job {
        Job::CreateSession {
            session,
            hash,
            reply,
        } => {
            let _ = reply.send(store.create_session(&session, &hash).await);
        }
        Job::Rotate {
            old_hash,
            new_hash,
            now,
            grace,
            idle,
            reply,
        } => {
            let _ = reply.send(
                store
                    .rotate_refresh(&old_hash, &new_hash, now, grace, idle)
                    .await,
            );
        }
    }
}

/// Answers a job with a database error.
fn fail(job: Job, why: &str) {
    match job {
        Job::CreateSession { reply, .. } => {
            let _ = reply.send(Err(StoreError::Db(why.into())));
        }
        Job::Rotate { reply, .. } => {
            let _ = reply.send(Err(StoreError::Db(why.into())));
        }
    }
}

impl Store {
    /// Queues `job` when this store groups its writes; gives it back otherwise.
    pub(super) async fn enqueue(&self, job: Job) -> Result<(), Job> {
        match &self.group {
            Some(queue) => queue.send(job).await.map_err(|e| e.0),
            None => Err(job),
        }
    }
}

/// The answer to a queued job; a dropped reply (the task gone) is a database failure.
pub(super) async fn answer<T>(
    reply: oneshot::Receiver<Result<T, StoreError>>,
) -> Result<T, StoreError> {
    reply
        .await
        .unwrap_or_else(|_| Err(StoreError::Db("the write queue stopped".into())))
}
