//! Heap bytes per cached token: verifies N distinct ES256 tokens (issuer-shaped, as in the
//! benchmarks) into a verified-token cache and prints the heap growth (counting allocator),
//! the cache's own weight estimate and the process RSS. Used to size the cache and to check
//! `ENTRY_OVERHEAD` in src/verify/cache.rs:
//! `cargo run --release -p portcullis-gateway --example cache_memory -- 10000`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use portcullis_gateway::{
    parse_jwks, Issuer, IssuerKeys, KeySource, RefreshPolicy, TokenCache, Verifier, VerifyObserver,
};

#[path = "../../bench/tokengen/src/mint.rs"]
mod mint;

/// Counts live heap bytes and allocation calls.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

struct Nop;
impl VerifyObserver for Nop {
    fn cache(&self, _hit: bool) {}
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let key = mint::BenchKey::generate("ES256");
    let jwks = serde_json::json!({ "keys": [key.public_jwk().expect("jwk")] });
    let public = parse_jwks(jwks.to_string().as_bytes(), false).expect("jwks");
    let iss = "https://bench.portcullis.test";
    let issuer = Arc::new(Issuer {
        name: "bench".into(),
        iss: iss.into(),
        keys: IssuerKeys::new(
            "bench".into(),
            KeySource::Static(public),
            RefreshPolicy::default(),
        ),
        algorithms: vec![Algorithm::ES256],
        audiences: vec!["demo".into()],
        leeway: 30,
        typ: vec!["at+jwt".into()],
        required: true,
        revocations: None,
    });
    let tokens: Vec<String> = (0..n)
        .map(|i| key.token(&mint::claims(iss, "demo", i, 3600)))
        .collect();
    // The gateway's defaults (`auth.cache_entries`, `auth.cache_max_bytes`).
    let cache = Arc::new(TokenCache::with_limits(100_000, Some(64 << 20)));
    let verifier = Verifier::new(vec![issuer], 8 * 1024, 1, cache.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (live0, calls0, rss0) = (
        LIVE.load(Ordering::Relaxed),
        CALLS.load(Ordering::Relaxed),
        rss_kib(),
    );
    rt.block_on(async {
        for t in &tokens {
            verifier.verify(t, &Nop).await.expect("valid token");
        }
    });
    cache.run_pending_tasks();
    let (live1, calls1, rss1) = (
        LIVE.load(Ordering::Relaxed),
        CALLS.load(Ordering::Relaxed),
        rss_kib(),
    );
    println!(
        "{n} tokens (~{} bytes each), {} cached, weight {} bytes/token: heap +{} bytes = {} bytes/token; {} allocations/verify; RSS +{} KiB = {} bytes/token",
        tokens[0].len(),
        cache.len(),
        cache.weighted_size() / cache.len().max(1),
        live1 - live0,
        (live1 - live0) / n as isize,
        (calls1 - calls0) / n,
        rss1 - rss0,
        (rss1 - rss0) * 1024 / n as u64,
    );
}
