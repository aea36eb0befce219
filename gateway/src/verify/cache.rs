//! The verified-token cache (moka): keyed by a keyed 64-bit hash of the token (a hit is then
//! compared with the token in full), an entry never outlives the token's `exp`, bounded in
//! entries and bytes.

use std::sync::Arc;
use std::time::Duration;

use super::{now_secs, VerifiedToken};

/// A cache key: SipHash-1-3 of (generation, token) under a per-process random key.
pub(super) type CacheKey = u64;

/// Cached verification results, shared by every config generation.
pub struct TokenCache {
    pub(super) cache: moka::sync::Cache<CacheKey, Arc<VerifiedToken>>,
}

/// moka's own bookkeeping per entry (entry info, hash-table bucket, deque and timer-wheel
/// nodes, the key), added to each entry's weight; measured with the `cache_memory` example.
pub(super) const ENTRY_OVERHEAD: usize = 320;

pub(super) struct ExpireAtExp;

impl moka::Expiry<CacheKey, Arc<VerifiedToken>> for ExpireAtExp {
    fn expire_after_create(
        &self,
        _k: &CacheKey,
        v: &Arc<VerifiedToken>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        // Never outlive the token (leeway included: the hit path re-checks exp anyway).
        Some(Duration::from_secs(
            v.exp
                .saturating_add(v.issuer.leeway)
                .saturating_sub(now_secs()),
        ))
    }
}

impl TokenCache {
    /// A cache bounded to `max_entries` tokens.
    pub fn new(max_entries: u64) -> Self {
        Self::with_limits(max_entries, None)
    }

    /// A cache bounded to `max_entries` tokens and, if given, about `max_bytes` of memory,
    /// whichever is reached first.
    pub fn with_limits(max_entries: u64, max_bytes: Option<u64>) -> Self {
        let max_entries = max_entries.max(1);
        let builder = moka::sync::Cache::builder().expire_after(ExpireAtExp);
        let cache = match max_bytes {
            None => builder.max_capacity(max_entries).build(),
            Some(max_bytes) => {
                // One weighted bound for both limits: every entry weighs at least
                // `max_bytes / max_entries`, so no more than `max_entries` fit, and at least
                // its size in bytes, so no more than `max_bytes` are held.
                let max_bytes = max_bytes.max(1);
                let floor = (max_bytes / max_entries).max(1);
                builder
                    .max_capacity(max_bytes)
                    .weigher(move |_k: &CacheKey, v: &Arc<VerifiedToken>| -> u32 {
                        let bytes = (v.approx_bytes() + ENTRY_OVERHEAD) as u64;
                        bytes.max(floor).min(max_bytes).min(u32::MAX as u64) as u32
                    })
                    .build()
            }
        };
        TokenCache { cache }
    }

    /// Number of cached tokens (approximate).
    pub fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Whether the cache is empty (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total weight of the cached tokens: approximate bytes with a byte bound, else entries.
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Applies pending inserts and evictions now, so `len` is exact (tests, measurements).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }
}
