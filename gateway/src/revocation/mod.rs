//! Revocation at the edge: each issuer's revoked sessions and subject cut-offs, followed from
//! its revocation feed and checked on every request (cached token or not).
//!
//! [`Revocations`] is one issuer's state: the set ([`set::RevokedSet`], lock-free reads), the
//! feed settings, and the feed's health. A [`RevocationFollower`] (a Pingora background
//! service) reads each feed in its own task and does the housekeeping; the verifier calls
//! [`Revocations::check`] for every token of that issuer.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::jwks::fetch::build_client;
use crate::jwks::JwksError;
use crate::verify::{now_secs, AuthError};

mod feed;
mod follower;
mod set;

pub use feed::FeedError;
pub use follower::RevocationFollower;
pub(crate) use set::RecordKey;

/// What to do with an issuer's tokens once its feed has been unreachable for `max_stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StalePolicy {
    /// Keep accepting them (until `exp`), with a warning in the log and the
    /// `portcullis_revocation_feed_stale` metric.
    Accept,
    /// Refuse them (401 `invalid_token`) until the feed answers again.
    Refuse,
}

/// Where a feed is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedUrl {
    /// This URL.
    Fixed(String),
    /// The `revocation_feed_endpoint` of this issuer's discovery document.
    Discovery(String),
}

/// How an issuer's feed is read.
#[derive(Clone, PartialEq, Eq)]
pub struct FeedSpec {
    /// Where it is.
    pub url: FeedUrl,
    /// The feed credential (a bearer token).
    pub token: String,
    /// How long the feed may go unread before the state counts as stale.
    pub max_stale: Duration,
    /// What stale means for tokens.
    pub on_stale: StalePolicy,
    /// Limit of one read (the issuer's long poll plus headroom).
    pub timeout: Duration,
}

impl fmt::Debug for FeedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credential.
        f.debug_struct("FeedSpec")
            .field("url", &self.url)
            .field("max_stale", &self.max_stale)
            .field("on_stale", &self.on_stale)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The feed's health and what is held, for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevocationStats {
    /// A complete snapshot has been loaded.
    pub loaded: bool,
    /// Seconds since the last successful read (None: never).
    pub seconds_since_read: Option<u64>,
    /// Unread for longer than `max_stale` (or never read).
    pub stale: bool,
    /// Revoked sessions held.
    pub sessions: u64,
    /// Subject cut-offs held.
    pub subjects: u64,
    /// Session records received.
    pub session_events: u64,
    /// Subject records received.
    pub subject_events: u64,
    /// Successful reads.
    pub reads_ok: u64,
    /// Failed reads.
    pub reads_failed: u64,
}

/// One issuer's revocations: the set, the feed settings and the feed's health.
pub struct Revocations {
    name: String,
    spec: FeedSpec,
    client: Result<reqwest::Client, JwksError>,
    set: set::RevokedSet,
    loaded: AtomicBool,
    /// Unix seconds of the last successful read; 0: never.
    last_read: AtomicU64,
    /// Stale at the last housekeeping (to log changes once).
    stale: AtomicBool,
    /// A warning about staleness was logged and its recovery not yet.
    warned: AtomicBool,
    session_events: AtomicU64,
    subject_events: AtomicU64,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("issuer", &self.name)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// The digests a token is checked under, computed once when it is verified.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokenKeys {
    pub(crate) sid: Option<RecordKey>,
    pub(crate) sub: Option<RecordKey>,
}

impl TokenKeys {
    pub(crate) fn of(sid: Option<&str>, sub: Option<&str>) -> TokenKeys {
        TokenKeys {
            sid: sid.map(RecordKey::of),
            sub: sub.map(RecordKey::of),
        }
    }
}

impl Revocations {
    /// The revocations of issuer `name` (for logs and metrics), read as `spec` says once a
    /// [`RevocationFollower`] follows them.
    pub fn new(name: String, spec: FeedSpec) -> Arc<Revocations> {
        let client = build_client(spec.timeout);
        Arc::new(Revocations {
            name,
            spec,
            client,
            set: set::RevokedSet::default(),
            loaded: AtomicBool::new(false),
            last_read: AtomicU64::new(0),
            stale: AtomicBool::new(true),
            warned: AtomicBool::new(false),
            session_events: AtomicU64::new(0),
            subject_events: AtomicU64::new(0),
            reads_ok: AtomicU64::new(0),
            reads_failed: AtomicU64::new(0),
        })
    }

    /// New revocations for `spec` that start from what `previous` holds (a reload that
    /// changed the feed settings must not forget what is revoked while it reloads the snapshot).
    pub fn succeeding(name: String, spec: FeedSpec, previous: &Revocations) -> Arc<Revocations> {
        let next = Revocations::new(name, spec);
        next.set.copy_from(&previous.set);
        next.loaded
            .store(previous.loaded.load(Ordering::Acquire), Ordering::Release);
        // The counters continue: the exposed metrics only ever move up to them.
        for (to, from) in [
            (&next.last_read, &previous.last_read),
            (&next.session_events, &previous.session_events),
            (&next.subject_events, &previous.subject_events),
            (&next.reads_ok, &previous.reads_ok),
            (&next.reads_failed, &previous.reads_failed),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        next
    }

    /// The issuer's config label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The feed settings.
    pub fn spec(&self) -> &FeedSpec {
        &self.spec
    }

    /// Whether a complete snapshot has been loaded (readiness waits for it).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Refuses a token of this issuer whose session is revoked, whose subject has a cut-off
    /// after its `iat` (or that has no `iat` while its subject has a cut-off), or — under
    /// [`StalePolicy::Refuse`] — any token while the feed is stale.
    #[inline]
    pub(crate) fn check(
        &self,
        keys: &TokenKeys,
        iat: Option<u64>,
        now: u64,
    ) -> Result<(), AuthError> {
        if let Some(sid) = &keys.sid {
            if self.set.session(sid).is_some() {
                return Err(AuthError::SessionRevoked);
            }
        }
        if let Some(sub) = &keys.sub {
            if let Some(cut) = self.set.subject(sub) {
                if iat.is_none_or(|iat| iat < u64::from(cut.not_before)) {
                    return Err(AuthError::SubjectRevoked);
                }
            }
        }
        if self.spec.on_stale == StalePolicy::Refuse && self.stale_at(now) {
            return Err(AuthError::RevocationStale);
        }
        Ok(())
    }

    fn stale_at(&self, now: u64) -> bool {
        let last = self.last_read.load(Ordering::Relaxed);
        !self.is_loaded() || last == 0 || now.saturating_sub(last) > self.spec.max_stale.as_secs()
    }

    /// The feed's health and what is held.
    pub fn stats(&self) -> RevocationStats {
        let held = self.set.held();
        let last = self.last_read.load(Ordering::Relaxed);
        RevocationStats {
            loaded: self.is_loaded(),
            seconds_since_read: (last != 0).then(|| now_secs().saturating_sub(last)),
            stale: self.stale_at(now_secs()),
            sessions: held.sessions,
            subjects: held.subjects,
            session_events: self.session_events.load(Ordering::Relaxed),
            subject_events: self.subject_events.load(Ordering::Relaxed),
            reads_ok: self.reads_ok.load(Ordering::Relaxed),
            reads_failed: self.reads_failed.load(Ordering::Relaxed),
        }
    }

    /// Applies one page of the feed; `snapshot` accumulates a snapshot that spans pages.
    fn apply(&self, page: feed::Page, snapshot: &mut Option<Vec<set::Change>>) {
        self.session_events
            .fetch_add(page.sessions, Ordering::Relaxed);
        self.subject_events
            .fetch_add(page.subjects, Ordering::Relaxed);
        if page.snapshot {
            *snapshot = Some(Vec::new());
        }
        match snapshot {
            Some(pending) => {
                pending.extend(page.changes);
                if !page.more {
                    self.set.replace(pending);
                    *snapshot = None;
                    self.loaded.store(true, Ordering::Release);
                }
            }
            None => self.set.apply(&page.changes, now_secs() as u32),
        }
    }

    /// Marks a successful read now.
    fn read_ok(&self) {
        self.reads_ok.fetch_add(1, Ordering::Relaxed);
        self.last_read.store(now_secs(), Ordering::Relaxed);
    }

    /// Counts a failed read.
    fn read_failed(&self) {
        self.reads_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops expired records and updates the stale flag (logging its changes).
    fn housekeeping(&self, now: u64) {
        self.set.prune(now as u32);
        let stale = self.stale_at(now);
        let was = self.stale.swap(stale, Ordering::Relaxed);
        // Start-up (stale until the first snapshot) is not worth a warning; readiness says it.
        if stale && !was {
            self.warned.store(true, Ordering::Relaxed);
            match self.spec.on_stale {
                StalePolicy::Accept => tracing::warn!(
                    issuer = %self.name,
                    "revocation feed unread for more than {:?}: its tokens are still accepted (on_stale: accept), but revocations since then are not known",
                    self.spec.max_stale
                ),
                StalePolicy::Refuse => tracing::error!(
                    issuer = %self.name,
                    "revocation feed unread for more than {:?}: refusing its tokens until it answers (on_stale: refuse)",
                    self.spec.max_stale
                ),
            }
        } else if !stale && was && self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!(issuer = %self.name, "revocation feed is current again");
        }
    }

    /// Loads `n` revoked sessions named `{prefix}{i}` as a snapshot (benchmarks, memory
    /// measurements).
    #[cfg(feature = "bench-internals")]
    pub(crate) fn load_sessions(&self, prefix: &str, n: usize) {
        let until = u32::MAX;
        let changes: Vec<set::Change> = (0..n)
            .map(|i| set::Change::Session {
                key: RecordKey::of(&format!("{prefix}{i}")),
                until,
            })
            .collect();
        self.set.replace(&changes);
        self.loaded.store(true, Ordering::Release);
        self.read_ok();
    }

    /// [`Self::check`] for a verified token of this issuer (benchmarks).
    #[cfg(feature = "bench-internals")]
    pub(crate) fn check_token(&self, t: &crate::verify::VerifiedToken) -> Result<(), AuthError> {
        self.check(&t.revocation_keys, t.iat, now_secs())
    }
}

#[cfg(test)]
mod tests;
