//! Following revocation feeds in the background: one reading task per issuer (a slow or
//! unreachable issuer never delays another), housekeeping once a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::feed::{self, FeedError};
use super::{FeedUrl, Revocations};
use crate::verify::now_secs;

/// Housekeeping period: stale flags, pruning, the observer.
const TICK: Duration = Duration::from_secs(1);
/// Waits after a failed read: doubled per failure up to the maximum.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// An answer with nothing new faster than this did not wait (a server that does not long-poll,
/// or one that answers every read with a snapshot): pause before the next read.
const TOO_QUICK: Duration = Duration::from_millis(50);

type Observer = Box<dyn Fn(&Revocations) + Send + Sync>;

enum FeedList {
    Fixed(Vec<Arc<Revocations>>),
    Following(Box<dyn Fn() -> Vec<Arc<Revocations>> + Send + Sync>),
}

/// Reads the revocation feeds of any number of issuers and keeps their sets current. Runs as
/// a Pingora [`BackgroundService`] or through [`run`](Self::run).
pub struct RevocationFollower {
    feeds: FeedList,
    observer: Option<Observer>,
}

impl RevocationFollower {
    /// A follower of a fixed list.
    pub fn new(feeds: Vec<Arc<Revocations>>) -> Self {
        RevocationFollower {
            feeds: FeedList::Fixed(feeds),
            observer: None,
        }
    }

    /// A follower of a list that may change (asked for once a second); a feed that leaves the
    /// list stops being read.
    pub fn following(feeds: impl Fn() -> Vec<Arc<Revocations>> + Send + Sync + 'static) -> Self {
        RevocationFollower {
            feeds: FeedList::Following(Box::new(feeds)),
            observer: None,
        }
    }

    /// Calls `observer` for every feed once a second (for metrics: [`Revocations::stats`]).
    pub fn with_observer(
        mut self,
        observer: impl Fn(&Revocations) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Reads every feed until `shutdown` turns.
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        // Keyed by address; the Arc held here keeps the address from being reused.
        let mut readers: HashMap<usize, (Arc<Revocations>, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            let feeds = match &self.feeds {
                FeedList::Fixed(feeds) => feeds.clone(),
                FeedList::Following(list) => list(),
            };
            let now = now_secs();
            for feed in &feeds {
                feed.housekeeping(now);
                if let Some(observe) = &self.observer {
                    observe(feed);
                }
                readers
                    .entry(Arc::as_ptr(feed) as usize)
                    .or_insert_with(|| (feed.clone(), tokio::spawn(read_forever(feed.clone()))));
            }
            readers.retain(|&id, (_, task)| {
                let keep = feeds.iter().any(|f| Arc::as_ptr(f) as usize == id);
                if !keep {
                    task.abort();
                }
                keep
            });
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
        }
        for (_, (_, task)) in readers {
            task.abort();
        }
    }
}

#[async_trait]
impl BackgroundService for RevocationFollower {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await
    }
}

/// Reads one feed for as long as the task lives: a snapshot first, then every page after
/// the cursor, each read waiting (the issuer's long poll) until there is something new.
async fn read_forever(state: Arc<Revocations>) {
    let client = match &state.client {
        Ok(c) => c.clone(),
        Err(e) => {
            tracing::error!(issuer = %state.name, "revocation feed: no HTTP client: {e}");
            return;
        }
    };
    let mut url = match &state.spec.url {
        FeedUrl::Fixed(u) => Some(u.clone()),
        FeedUrl::Discovery(_) => None,
    };
    let mut cursor: Option<i64> = None;
    let mut snapshot = None;
    let mut retry = RETRY_MIN;
    let mut failing = false;
    loop {
        let started = Instant::now();
        let result = async {
            let target = match (&url, &state.spec.url) {
                (Some(u), _) | (None, FeedUrl::Fixed(u)) => u.clone(),
                (None, FeedUrl::Discovery(iss)) => {
                    let found = feed::discover(&client, iss, state.spec.timeout).await?;
                    url = Some(found.clone());
                    found
                }
            };
            feed::read(
                &client,
                &target,
                &state.spec.token,
                cursor,
                state.spec.timeout,
            )
            .await
        }
        .await;
        match result {
            Ok(page) => {
                if failing {
                    tracing::info!(issuer = %state.name, "revocation feed answers again");
                    failing = false;
                }
                retry = RETRY_MIN;
                // Nothing new (or a whole snapshot again) at once: this server did not wait,
                // and asking again at once would spin.
                let idle = !page.more && (page.changes.is_empty() || page.snapshot);
                cursor = Some(page.next);
                state.apply(page, &mut snapshot);
                state.read_ok();
                if idle && started.elapsed() < TOO_QUICK {
                    tokio::time::sleep(RETRY_MIN).await;
                }
            }
            Err(e) => {
                state.read_failed();
                // The first failure of a run is a warning; repeats would flood the log.
                if !failing {
                    tracing::warn!(issuer = %state.name, "revocation feed read failed (retrying): {e}");
                    failing = true;
                } else {
                    tracing::debug!(issuer = %state.name, "revocation feed read failed: {e}");
                }
                if matches!(state.spec.url, FeedUrl::Discovery(_))
                    && !matches!(e, FeedError::Unauthorized(_))
                {
                    // The issuer may have moved its feed.
                    url = None;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}
