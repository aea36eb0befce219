//! Per-issuer key state: the live key set of one issuer, its refresh schedule, the
//! single-flight fetch and the unknown-`kid` refetch with its cooldown and negative cache.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde_json::Value;

use super::fetch::{build_client, has_scheme, http_get, unix_get, HttpAnswer};
use super::parse::{loggable, parse_jwks};
use super::{JwksError, KeySet, VerifyKey};

/// Bound on remembered unknown kids (each entry is a kid string of at most `MAX_CACHED_KID`).
const NEGATIVE_CACHE_CAPACITY: u64 = 10_000;
/// Longer kids are not remembered (the cooldown still limits the fetches they can cause).
const MAX_CACHED_KID: usize = 256;

/// Where an issuer's keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `http://…`, `https://…`, or `unix:/path/to.sock:/jwks/path` (HTTP/1.1 over a Unix socket).
    Remote(String),
    /// OIDC discovery: GET `{issuer}/.well-known/openid-configuration`, read `jwks_uri`, then
    /// as Remote (the discovery document is re-read on each refresh).
    Discovery(String),
    /// Keys loaded once from a file or secret; never refreshed.
    Static(Vec<VerifyKey>),
}

/// Refresh and safety bounds (all configurable by the caller).
#[derive(Clone, Debug)]
pub struct RefreshPolicy {
    /// A Cache-Control max-age below this is raised to it.
    pub min_refresh: Duration,
    /// A max-age above this is lowered to it.
    pub max_refresh: Duration,
    /// Refresh interval when the response has no max-age.
    pub default_refresh: Duration,
    /// Next attempt after a failed fetch.
    pub retry_after_failure: Duration,
    /// At most one unknown-kid refetch per issuer per cooldown.
    pub unknown_kid_cooldown: Duration,
    /// An unknown kid that was refetched for and is still unknown is remembered this long.
    pub negative_kid_ttl: Duration,
    /// The last good keys are used this long after the last successful fetch, then dropped
    /// (fail closed).
    pub max_stale: Duration,
    /// Limit for one HTTP exchange (discovery and JWKS each).
    pub fetch_timeout: Duration,
    /// Bigger bodies are refused (read with a cap, never buffered unbounded).
    pub max_response_bytes: usize,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            default_refresh: Duration::from_secs(300),
            retry_after_failure: Duration::from_secs(10),
            unknown_kid_cooldown: Duration::from_secs(30),
            negative_kid_ttl: Duration::from_secs(60),
            max_stale: Duration::from_secs(24 * 3600),
            fetch_timeout: Duration::from_secs(5),
            max_response_bytes: 256 * 1024,
        }
    }
}

/// Counters and ages for metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerKeyStats {
    /// Successful fetches (200 or 304).
    pub fetches_ok: u64,
    /// Failed fetches (transport, status, size, parse, no usable key).
    pub fetches_failed: u64,
    /// Seconds since the last successful fetch; None if never fetched (always for static keys).
    pub seconds_since_success: Option<f64>,
    /// Keys in the usable set (0 when not ready).
    pub keys: usize,
    /// Generation of the usable set (0 when not ready).
    pub generation: u64,
    /// Refetches started because a token named an unknown kid.
    pub unknown_kid_fetches: u64,
}

/// What to fetch, once static keys have been installed.
#[derive(Debug)]
enum Origin {
    Url(String),
    Discovery(String),
    Static,
}

/// State only fetchers touch, behind the single-flight lock.
struct FetchState {
    /// ETag of the last 200, with the URL it belongs to (discovery may move the JWKS).
    etag: Option<(String, String)>,
    /// Outcome of the last fetch, handed to callers that waited for it.
    last: Result<bool, JwksError>,
}

/// Live keys of one issuer.
pub struct IssuerKeys {
    name: String,
    origin: Origin,
    policy: RefreshPolicy,
    /// One client per issuer, so connections (and TLS sessions) are reused across refreshes.
    client: Result<reqwest::Client, JwksError>,
    set: ArcSwapOption<KeySet>,
    /// Origin of the monotonic millisecond stamps below, where 0 means "never".
    epoch: Instant,
    last_success_ms: AtomicU64,
    next_refresh_ms: AtomicU64,
    last_unknown_kid_fetch_ms: AtomicU64,
    generation: AtomicU64,
    /// Fetches finished so far; tells a caller that waited for the lock that it can share.
    completed_fetches: AtomicU64,
    fetch: tokio::sync::Mutex<FetchState>,
    negative_kids: moka::sync::Cache<String, ()>,
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
    unknown_kid_fetches: AtomicU64,
}

impl fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("name", &self.name)
            .field("origin", &self.origin)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl IssuerKeys {
    /// Keys of issuer `name` from `source`; Static sources are ready at once, the others after
    /// the first successful [`refresh`](Self::refresh).
    pub fn new(name: String, source: KeySource, policy: RefreshPolicy) -> Arc<IssuerKeys> {
        let (origin, initial) = match source {
            KeySource::Remote(url) => (Origin::Url(url), None),
            KeySource::Discovery(issuer) => (Origin::Discovery(issuer), None),
            KeySource::Static(keys) if keys.is_empty() => (Origin::Static, None),
            KeySource::Static(keys) => (
                Origin::Static,
                Some(Arc::new(KeySet {
                    keys: keys.into_iter().map(Arc::new).collect(),
                    fetched_at: SystemTime::now(),
                    generation: 1,
                })),
            ),
        };
        let client = match origin {
            Origin::Static => Err(JwksError::Client("static keys are never fetched".into())),
            _ => build_client(policy.fetch_timeout),
        };
        if let Err(e) = &client {
            if !matches!(origin, Origin::Static) {
                tracing::error!(issuer = %name, error = %e, "JWKS fetching disabled");
            }
        }
        let generation = if initial.is_some() { 1 } else { 0 };
        let negative_kids = moka::sync::Cache::builder()
            .max_capacity(NEGATIVE_CACHE_CAPACITY)
            // moka refuses a zero or centuries-long TTL; keep any configured value in range.
            .time_to_live(policy.negative_kid_ttl.clamp(
                Duration::from_millis(1),
                Duration::from_secs(365 * 24 * 3600),
            ))
            .build();
        Arc::new(IssuerKeys {
            name,
            origin,
            client,
            set: ArcSwapOption::new(initial),
            epoch: Instant::now(),
            last_success_ms: AtomicU64::new(0),
            next_refresh_ms: AtomicU64::new(0),
            last_unknown_kid_fetch_ms: AtomicU64::new(0),
            generation: AtomicU64::new(generation),
            completed_fetches: AtomicU64::new(0),
            fetch: tokio::sync::Mutex::new(FetchState {
                etag: None,
                last: Ok(false),
            }),
            negative_kids,
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
            unknown_kid_fetches: AtomicU64::new(0),
            policy,
        })
    }

    /// The issuer name given at construction.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The usable key set, or None when there are no keys yet or the last good set is older
    /// than max_stale. Lock-free (arc-swap load); this is the hot path.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        let set = self.set.load_full()?;
        if !self.is_static() && self.since_success_ms()? > millis(self.policy.max_stale) {
            return None;
        }
        Some(set)
    }

    /// Whether keys are usable (`current().is_some()`); readiness waits for this.
    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    /// Fetch now (conditional GET with If-None-Match when an ETag is known; a 304 keeps the
    /// set and only extends freshness). On success schedules the next refresh from
    /// Cache-Control max-age clamped to [min, max] (default_refresh when absent); on failure
    /// keeps the old keys (until max_stale), logs, counts, and schedules retry_after_failure.
    /// Concurrent callers share one fetch. Returns whether the key set changed. Static
    /// sources return `Ok(false)` without doing anything.
    pub async fn refresh(&self) -> Result<bool, JwksError> {
        if self.is_static() {
            return Ok(false);
        }
        self.single_flight(|_| true).await.unwrap_or(Ok(false))
    }

    /// Whether a scheduled refresh is due (for the background loop). Never for static keys.
    pub fn refresh_due(&self) -> bool {
        !self.is_static() && self.now_ms() >= self.next_refresh_ms.load(Ordering::Acquire)
    }

    /// Time until the next scheduled refresh (zero when due), so a background loop can sleep
    /// exactly; None for static keys.
    pub fn next_refresh_in(&self) -> Option<Duration> {
        if self.is_static() {
            return None;
        }
        let next = self.next_refresh_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(next.saturating_sub(self.now_ms())))
    }

    /// Called when a token names a kid not in the set. If the kid is in the negative cache, or
    /// the last unknown-kid refetch was less than unknown_kid_cooldown ago, returns current()
    /// without fetching (after waiting for a fetch that is running, if any). Otherwise does ONE
    /// refetch (concurrent callers wait for the same fetch), remembers the kid in the negative
    /// cache if it is still unknown, and returns current().
    pub async fn refetch_for_unknown_kid(&self, kid: &str) -> Option<Arc<KeySet>> {
        if self.is_static() {
            return self.current();
        }
        let current = self.current();
        if current.as_ref().is_some_and(|s| s.has_kid(kid)) || self.negative_kids.contains_key(kid)
        {
            return current;
        }
        // Inside the cooldown with no fetch running there is nothing to wait for: answer at
        // once, without queueing a flood of bogus kids behind the lock.
        if !self.unknown_kid_cooldown_over() && self.fetch.try_lock().is_ok() {
            return self.current();
        }
        let outcome = self
            .single_flight(IssuerKeys::claim_unknown_kid_fetch)
            .await;
        let current = self.current();
        // Only a fetch that worked proves the kid missing; after a failure it may yet appear.
        if matches!(outcome, Some(Ok(_)))
            && kid.len() <= MAX_CACHED_KID
            && !current.as_ref().is_some_and(|s| s.has_kid(kid))
        {
            self.negative_kids.insert(kid.to_owned(), ());
        }
        current
    }

    /// Counters and ages for metrics: fetches ok, fetches failed, seconds since last
    /// successful fetch (None if never), number of keys.
    pub fn stats(&self) -> IssuerKeyStats {
        let current = self.current();
        IssuerKeyStats {
            fetches_ok: self.fetches_ok.load(Ordering::Relaxed),
            fetches_failed: self.fetches_failed.load(Ordering::Relaxed),
            seconds_since_success: self
                .since_success_ms()
                .map(|ms| Duration::from_millis(ms).as_secs_f64()),
            keys: current.as_ref().map_or(0, |s| s.keys.len()),
            generation: current.as_ref().map_or(0, |s| s.generation),
            unknown_kid_fetches: self.unknown_kid_fetches.load(Ordering::Relaxed),
        }
    }

    fn is_static(&self) -> bool {
        matches!(self.origin, Origin::Static)
    }

    /// Milliseconds on the monotonic clock since `epoch`, plus one so that 0 means "never".
    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed()).saturating_add(1)
    }

    fn since_success_ms(&self) -> Option<u64> {
        match self.last_success_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(self.now_ms().saturating_sub(at)),
        }
    }

    fn unknown_kid_cooldown_over(&self) -> bool {
        match self.last_unknown_kid_fetch_ms.load(Ordering::Acquire) {
            0 => true,
            at => self.now_ms().saturating_sub(at) >= millis(self.policy.unknown_kid_cooldown),
        }
    }

    /// Under the fetch lock: may an unknown kid start a fetch now? Claims the cooldown if so.
    fn claim_unknown_kid_fetch(&self) -> bool {
        if !self.unknown_kid_cooldown_over() {
            return false;
        }
        self.last_unknown_kid_fetch_ms
            .store(self.now_ms(), Ordering::Release);
        self.unknown_kid_fetches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(issuer = %self.name, "token with an unknown kid: refetching keys");
        true
    }

    /// Runs one fetch under the lock, or shares the outcome of a fetch that finished while this
    /// caller waited for the lock. `may_fetch` decides, under the lock, whether a new fetch may
    /// start; None when it said no and nothing was shared.
    async fn single_flight(
        &self,
        may_fetch: impl FnOnce(&IssuerKeys) -> bool,
    ) -> Option<Result<bool, JwksError>> {
        let seen = self.completed_fetches.load(Ordering::Acquire);
        let mut state = self.fetch.lock().await;
        if self.completed_fetches.load(Ordering::Acquire) != seen {
            return Some(state.last.clone());
        }
        if !may_fetch(self) {
            return None;
        }
        let outcome = self.fetch_and_apply(&mut state).await;
        state.last = outcome.clone();
        self.completed_fetches.fetch_add(1, Ordering::Release);
        Some(outcome)
    }

    /// One fetch and its bookkeeping; the caller holds the fetch lock.
    async fn fetch_and_apply(&self, state: &mut FetchState) -> Result<bool, JwksError> {
        let outcome = self.fetch_once(state).await;
        let now = self.now_ms();
        match outcome {
            Ok(Some((url, answer))) if answer.status == 304 => match self.set.load_full() {
                Some(old) => {
                    // Same keys, confirmed now: only freshness moves. Freshness is recorded
                    // before the set is published so current() never sees a set without it.
                    self.succeeded(now, answer.max_age);
                    self.set.store(Some(Arc::new(KeySet {
                        keys: old.keys.clone(),
                        fetched_at: SystemTime::now(),
                        generation: old.generation,
                    })));
                    tracing::debug!(issuer = %self.name, "JWKS not modified");
                    Ok(false)
                }
                None => {
                    state.etag = None;
                    Err(self.failed(now, JwksError::UnexpectedNotModified { url }))
                }
            },
            Ok(Some((url, answer))) => {
                let keys = match parse_jwks(&answer.body, true) {
                    Ok(keys) if keys.is_empty() => Err(JwksError::NoUsableKeys),
                    other => other,
                };
                match keys {
                    Ok(keys) => {
                        self.succeeded(now, answer.max_age);
                        let changed = self.install(keys);
                        state.etag = answer.etag.map(|tag| (url, tag));
                        Ok(changed)
                    }
                    Err(e) => Err(self.failed(now, e)),
                }
            }
            Ok(None) => Ok(false),
            Err(e) => Err(self.failed(now, e)),
        }
    }

    /// Publishes freshly fetched keys; returns whether they differ from the current ones.
    fn install(&self, keys: Vec<VerifyKey>) -> bool {
        let keys: Vec<Arc<VerifyKey>> = keys.into_iter().map(Arc::new).collect();
        let old = self.set.load_full();
        let same = old
            .as_ref()
            .is_some_and(|old| KeySet::fingerprint(&old.keys) == KeySet::fingerprint(&keys));
        let (keys, generation) = match old {
            // Keep the old Arcs so anything holding a key sees the very same one.
            Some(old) if same => (old.keys.clone(), old.generation),
            _ => (keys, self.generation.fetch_add(1, Ordering::AcqRel) + 1),
        };
        if !same {
            tracing::info!(issuer = %self.name, keys = keys.len(), generation, "JWKS key set updated");
        }
        self.set.store(Some(Arc::new(KeySet {
            keys,
            fetched_at: SystemTime::now(),
            generation,
        })));
        !same
    }

    fn succeeded(&self, now: u64, max_age: Option<Duration>) {
        let p = &self.policy;
        let interval = match max_age {
            // max/min rather than clamp: clamp panics on a misconfigured min > max.
            Some(age) => age.max(p.min_refresh).min(p.max_refresh),
            None => p.default_refresh,
        };
        self.fetches_ok.fetch_add(1, Ordering::Relaxed);
        self.last_success_ms.store(now, Ordering::Release);
        self.next_refresh_ms
            .store(now.saturating_add(millis(interval)), Ordering::Release);
    }

    fn failed(&self, now: u64, error: JwksError) -> JwksError {
        self.fetches_failed.fetch_add(1, Ordering::Relaxed);
        self.next_refresh_ms.store(
            now.saturating_add(millis(self.policy.retry_after_failure)),
            Ordering::Release,
        );
        let stale = self
            .since_success_ms()
            .is_none_or(|age| age > millis(self.policy.max_stale));
        if stale && self.set.load().is_some() {
            // current() already hides these keys; dropping them makes it final and frees them.
            self.set.store(None);
            tracing::error!(issuer = %self.name, source = %self.origin_label(), error = %error,
                "JWKS refresh failed and the last good keys are older than max_stale: keys dropped, tokens of this issuer are rejected");
        } else {
            tracing::warn!(issuer = %self.name, source = %self.origin_label(), error = %error,
                "JWKS refresh failed; keeping the previous keys");
        }
        error
    }

    fn origin_label(&self) -> &str {
        match &self.origin {
            Origin::Url(url) | Origin::Discovery(url) => url,
            Origin::Static => "static",
        }
    }

    /// Resolves the JWKS URL and GETs it (conditionally when an ETag is known for that URL).
    async fn fetch_once(
        &self,
        state: &mut FetchState,
    ) -> Result<Option<(String, HttpAnswer)>, JwksError> {
        let url = match &self.origin {
            Origin::Url(url) => url.clone(),
            Origin::Discovery(issuer) => self.discover(issuer).await?,
            Origin::Static => return Ok(None),
        };
        // Conditional only while there is a set a 304 could refer to (keys dropped as stale
        // must be fetched in full).
        let etag = state
            .etag
            .as_ref()
            .filter(|(for_url, _)| *for_url == url && self.set.load().is_some())
            .map(|(_, tag)| tag.as_str());
        let answer = self.get(&url, etag).await?;
        match answer.status {
            200 => Ok(Some((url, answer))),
            304 if etag.is_some() => Ok(Some((url, answer))),
            status => Err(JwksError::Status { url, status }),
        }
    }

    /// Reads `jwks_uri` from the issuer's OIDC discovery document.
    async fn discover(&self, issuer: &str) -> Result<String, JwksError> {
        let base = issuer.trim_end_matches('/');
        let url = format!("{base}/.well-known/openid-configuration");
        let answer = self.get(&url, None).await?;
        if answer.status != 200 {
            return Err(JwksError::Status {
                url,
                status: answer.status,
            });
        }
        let bad = |reason: String| JwksError::Discovery {
            url: url.clone(),
            reason,
        };
        let doc: Value =
            serde_json::from_slice(&answer.body).map_err(|e| bad(format!("not JSON: {e}")))?;
        if let Some(advertised) = doc.get("issuer").and_then(Value::as_str) {
            if advertised.trim_end_matches('/') != base {
                // Tokens are checked against the configured issuer anyway; this is a hint for
                // the operator, not a reason to go without keys.
                tracing::warn!(issuer = %self.name, configured = base, advertised = loggable(advertised),
                    "discovery document names a different issuer");
            }
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no \"jwks_uri\" string".into()))?;
        // The document may not send key fetches to a local socket, nor downgrade to plain
        // HTTP when discovery itself used HTTPS.
        let allowed = has_scheme(jwks_uri, "https://")
            || (has_scheme(jwks_uri, "http://") && !has_scheme(&url, "https://"));
        if !allowed {
            return Err(bad(format!(
                "jwks_uri {:?} must be an https URL (or http for an http issuer)",
                loggable(jwks_uri)
            )));
        }
        Ok(jwks_uri.to_owned())
    }

    /// One GET with the policy's timeout and body cap, over TCP (reqwest) or a Unix socket.
    async fn get(&self, url: &str, etag: Option<&str>) -> Result<HttpAnswer, JwksError> {
        let limit = self.policy.max_response_bytes;
        let exchange = async {
            if let Some(rest) = url.strip_prefix("unix:") {
                unix_get(url, rest, etag, limit).await
            } else if has_scheme(url, "http://") || has_scheme(url, "https://") {
                let client = self.client.as_ref().map_err(Clone::clone)?;
                http_get(client, url, etag, None, limit, self.policy.fetch_timeout).await
            } else {
                Err(JwksError::BadUrl {
                    url: url.to_owned(),
                    reason: "expected http://, https:// or unix:/socket:/path".into(),
                })
            }
        };
        match tokio::time::timeout(self.policy.fetch_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(JwksError::Timeout {
                url: url.to_owned(),
                timeout: self.policy.fetch_timeout,
            }),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::test_keys::*;
    use crate::jwks::{hmac_key, EcCurve, KeyLookup};
    use jsonwebtoken::Algorithm;
    use portcullis_testkit::jwks::{JwksServer, JWKS_PATH};
    use serde_json::json;

    // ---- the test kit's JWKS server, set up like the fetchers' usual issuer ----

    /// A JWKS server publishing `keys` under the ETag `"v1"` with `max-age=300`.
    fn test_server(keys: Vec<Value>) -> JwksServer {
        let server = JwksServer::start();
        server.set_keys(keys);
        server.set_fixed_etag(Some("\"v1\"".into()));
        server.set_cache_control(Some("max-age=300".into()));
        server
    }

    fn ec_keys(kids: &[&str]) -> Vec<Value> {
        kids.iter()
            .map(|kid| ec_jwk(&ec_pair(EcCurve::P256), kid))
            .collect()
    }

    fn ec_doc(kids: &[&str]) -> Vec<u8> {
        jwks(&ec_keys(kids))
    }

    fn within(d: Option<Duration>, low_secs: u64, high_secs: u64) -> bool {
        d.is_some_and(|d| d > Duration::from_secs(low_secs) && d <= Duration::from_secs(high_secs))
    }

    #[tokio::test]
    async fn refresh_uses_etag_and_clamps_max_age() {
        let server = test_server(ec_keys(&["k1"]));
        server.set_cache_control(Some("public, max-age=5".into()));
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(server.url()),
            RefreshPolicy::default(),
        );
        assert!(!keys.is_ready() && keys.current().is_none());
        assert!(keys.refresh_due());

        assert_eq!(keys.refresh().await, Ok(true));
        assert!(keys.is_ready());
        assert_eq!(keys.current().unwrap().generation, 1);
        // max-age=5 is raised to min_refresh (60s).
        assert!(within(keys.next_refresh_in(), 59, 60));
        assert!(!keys.refresh_due());

        // The ETag is sent back; the 304 keeps the set and generation.
        server.set_cache_control(Some("max-age=999999".into()));
        let before = keys.current().unwrap();
        assert_eq!(keys.refresh().await, Ok(false));
        assert_eq!(server.not_modified_count(), 1);
        let after = keys.current().unwrap();
        assert_eq!(after.generation, 1);
        assert!(Arc::ptr_eq(&before.keys[0], &after.keys[0]));
        assert!(after.fetched_at >= before.fetched_at);
        // max-age above max_refresh (1h) is lowered to it.
        assert!(within(keys.next_refresh_in(), 3599, 3600));

        // No max-age: default_refresh (5 min).
        server.set_cache_control(None);
        assert_eq!(keys.refresh().await, Ok(false));
        assert!(within(keys.next_refresh_in(), 299, 300));

        // New content under a new ETag: a new generation.
        server.set_keys(ec_keys(&["k2", "k3"]));
        server.set_fixed_etag(Some("\"v2\"".into()));
        assert_eq!(keys.refresh().await, Ok(true));
        let set = keys.current().unwrap();
        assert_eq!((set.generation, set.keys.len()), (2, 2));
        // Same keys under yet another ETag: not a change.
        server.set_fixed_etag(Some("\"v3\"".into()));
        assert_eq!(keys.refresh().await, Ok(false));
        assert_eq!(keys.current().unwrap().generation, 2);
        // Without an ETag, refreshes are plain GETs.
        server.set_etag_enabled(false);
        assert_eq!(keys.refresh().await, Ok(false));

        assert_eq!(server.fetch_count(), 6);
        assert_eq!(server.not_modified_count(), 2);
        let stats = keys.stats();
        assert_eq!(
            (stats.fetches_ok, stats.fetches_failed, stats.keys),
            (6, 0, 2)
        );
        assert!(stats.seconds_since_success.is_some_and(|s| s < 5.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn unknown_kid_flood_causes_one_fetch() {
        let server = test_server(ec_keys(&["k1"]));
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(server.url()),
            RefreshPolicy::default(),
        );
        assert_eq!(keys.refresh().await, Ok(true));
        // A slow server, so the concurrent callers really overlap the one fetch.
        server.set_delay(Duration::from_millis(300));
        let tasks: Vec<_> = (0..10)
            .map(|t| {
                let keys = keys.clone();
                tokio::spawn(async move {
                    for i in 0..10 {
                        let set = keys
                            .refetch_for_unknown_kid(&format!("random-{t}-{i}"))
                            .await;
                        assert!(set.is_some(), "keys stay usable during a flood");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            server.fetch_count(),
            2,
            "one initial fetch and one unknown-kid fetch"
        );
        assert_eq!(keys.stats().unknown_kid_fetches, 1);
        // Still within the cooldown.
        keys.refetch_for_unknown_kid("yet-another").await;
        assert_eq!(server.fetch_count(), 2);
    }

    #[tokio::test]
    async fn unknown_kid_cooldown_and_negative_cache() {
        let server = test_server(ec_keys(&["k1"]));
        let policy = RefreshPolicy {
            unknown_kid_cooldown: Duration::from_millis(800),
            ..RefreshPolicy::default()
        };
        let keys = IssuerKeys::new("t".into(), KeySource::Remote(server.url()), policy);
        assert_eq!(keys.refresh().await, Ok(true));

        // A known kid never fetches.
        keys.refetch_for_unknown_kid("k1").await;
        assert_eq!(server.fetch_count(), 1);
        keys.refetch_for_unknown_kid("a").await;
        assert_eq!(server.fetch_count(), 2);
        keys.refetch_for_unknown_kid("b").await;
        assert_eq!(server.fetch_count(), 2, "cooldown");

        tokio::time::sleep(Duration::from_millis(900)).await;
        keys.refetch_for_unknown_kid("a").await;
        assert_eq!(server.fetch_count(), 2, "negative cache");
        keys.refetch_for_unknown_kid("b").await;
        assert_eq!(
            server.fetch_count(),
            3,
            "cooldown over, b not yet known to be missing"
        );

        // A key published later is found by the next refetch.
        server.set_keys(ec_keys(&["k1", "new"]));
        server.set_fixed_etag(Some("\"v2\"".into()));
        tokio::time::sleep(Duration::from_millis(900)).await;
        let set = keys.refetch_for_unknown_kid("new").await.unwrap();
        assert_eq!(server.fetch_count(), 4);
        assert!(matches!(
            set.lookup(Some("new"), Algorithm::ES256),
            KeyLookup::Found(_)
        ));
        assert_eq!(set.generation, 2);
    }

    #[tokio::test]
    async fn failures_keep_old_keys_until_max_stale() {
        let server = test_server(ec_keys(&["k1"]));
        let policy = RefreshPolicy {
            max_stale: Duration::from_millis(1000),
            ..RefreshPolicy::default()
        };
        let keys = IssuerKeys::new("t".into(), KeySource::Remote(server.url()), policy);
        assert_eq!(keys.refresh().await, Ok(true));

        server.set_status(500);
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Status { status: 500, .. })
        ));
        assert!(keys.is_ready(), "old keys are kept");
        assert!(within(keys.next_refresh_in(), 9, 10), "retry_after_failure");
        server.set_status(200);
        server.set_etag_enabled(false);
        server.set_body_override(Some(b"<html>maintenance</html>".to_vec()));
        assert!(matches!(keys.refresh().await, Err(JwksError::NotJson(_))));
        server.set_body_override(Some(
            br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#
                .to_vec(),
        ));
        assert_eq!(keys.refresh().await, Err(JwksError::NoUsableKeys));
        assert!(keys.is_ready());
        let stats = keys.stats();
        assert_eq!(
            (stats.fetches_ok, stats.fetches_failed, stats.keys),
            (1, 3, 1)
        );

        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(keys.current().is_none(), "too old: fail closed");
        assert!(!keys.is_ready());
        assert_eq!(keys.stats().keys, 0);
        assert!(keys.refresh().await.is_err());
        assert!(keys.current().is_none());

        server.set_body_override(None);
        server.set_keys(ec_keys(&["k2"]));
        assert_eq!(keys.refresh().await, Ok(true));
        assert_eq!(keys.current().unwrap().generation, 2);
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let mut body = ec_doc(&["k1"]);
        body.truncate(body.len() - 1);
        body.extend(std::iter::repeat_n(b' ', 4096));
        body.push(b'}');
        let server = test_server(Vec::new());
        server.set_body_override(Some(body));
        let small = RefreshPolicy {
            max_response_bytes: 1024,
            ..RefreshPolicy::default()
        };
        let keys = IssuerKeys::new("t".into(), KeySource::Remote(server.url()), small.clone());
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::TooLarge { limit: 1024, .. })
        ));
        // Without Content-Length (chunked) the cap applies while reading.
        server.set_content_length(false);
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::TooLarge { limit: 1024, .. })
        ));
        assert!(!keys.is_ready());

        let big = RefreshPolicy {
            max_response_bytes: 64 * 1024,
            ..small
        };
        let keys = IssuerKeys::new("t".into(), KeySource::Remote(server.url()), big);
        assert_eq!(keys.refresh().await, Ok(true));
    }

    #[tokio::test]
    async fn unix_socket_source() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("issuer.sock");
        let mut server = test_server(ec_keys(&["k1"]));
        server.serve_unix(&socket);
        let url = format!("unix:{}:{JWKS_PATH}", socket.display());
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(url.clone()),
            RefreshPolicy::default(),
        );
        assert_eq!(keys.refresh().await, Ok(true));
        assert!(keys.is_ready());
        assert_eq!(keys.refresh().await, Ok(false));
        assert_eq!(server.not_modified_count(), 1);

        let small = RefreshPolicy {
            max_response_bytes: 64,
            ..RefreshPolicy::default()
        };
        let capped = IssuerKeys::new("t".into(), KeySource::Remote(url), small);
        assert!(matches!(
            capped.refresh().await,
            Err(JwksError::TooLarge { .. })
        ));
        server.set_content_length(false);
        assert!(matches!(
            capped.refresh().await,
            Err(JwksError::TooLarge { .. })
        ));

        let missing = format!("unix:{}:/jwks", dir.path().join("nobody.sock").display());
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(missing),
            RefreshPolicy::default(),
        );
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Connect { .. })
        ));
        let no_path = format!("unix:{}", socket.display());
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(no_path),
            RefreshPolicy::default(),
        );
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::BadUrl { .. })
        ));
    }

    #[tokio::test]
    async fn discovery_source() {
        let server = test_server(ec_keys(&["k1"]));
        let base = server.issuer_url();
        server.set_discovery(Some(json!({"issuer": base, "jwks_uri": server.url()})));
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Discovery(format!("{base}/")),
            RefreshPolicy::default(),
        );
        assert_eq!(keys.refresh().await, Ok(true));
        assert_eq!(keys.refresh().await, Ok(false));
        assert_eq!(server.not_modified_count(), 1);

        // The discovery document cannot point key fetches at a local socket.
        server.set_discovery(Some(json!({"jwks_uri": "unix:/run/x.sock:/jwks"})));
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Discovery { .. })
        ));
        server.set_discovery(Some(json!({"issuer": base})));
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Discovery { .. })
        ));
        assert!(keys.is_ready());
    }

    #[tokio::test]
    async fn timeouts_bad_urls_and_refused_connections() {
        let server = test_server(ec_keys(&["k1"]));
        server.set_delay(Duration::from_millis(1500));
        let policy = RefreshPolicy {
            fetch_timeout: Duration::from_millis(200),
            ..RefreshPolicy::default()
        };
        let keys = IssuerKeys::new("t".into(), KeySource::Remote(server.url()), policy.clone());
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Timeout { .. })
        ));

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(format!("http://{addr}/jwks")),
            policy.clone(),
        );
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Connect { .. })
        ));
        assert_eq!(keys.stats().fetches_failed, 1);

        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote("ftp://example/jwks".into()),
            policy,
        );
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::BadUrl { .. })
        ));
        assert!(!keys.is_ready());
    }

    #[tokio::test]
    async fn static_keys_are_ready_and_never_fetched() {
        let key = hmac_key(&[5u8; 32], Some("h")).unwrap();
        let keys = IssuerKeys::new(
            "s".into(),
            KeySource::Static(vec![key]),
            RefreshPolicy::default(),
        );
        assert_eq!(keys.name(), "s");
        assert!(keys.is_ready());
        assert!(!keys.refresh_due());
        assert_eq!(keys.next_refresh_in(), None);
        assert_eq!(keys.refresh().await, Ok(false));
        let set = keys.refetch_for_unknown_kid("other").await.unwrap();
        assert!(matches!(
            set.lookup(Some("h"), Algorithm::HS256),
            KeyLookup::Found(_)
        ));
        let stats = keys.stats();
        assert_eq!(
            (stats.fetches_ok, stats.keys, stats.seconds_since_success),
            (0, 1, None)
        );

        let empty = IssuerKeys::new(
            "e".into(),
            KeySource::Static(Vec::new()),
            RefreshPolicy::default(),
        );
        assert!(!empty.is_ready());
    }
}
