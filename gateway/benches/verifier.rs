//! Micro-benchmarks of the verifier alone (criterion):
//!
//! - `signature/<alg>`: the bare signature check (`jsonwebtoken::crypto::verify` with the
//!   gateway's decoding key), the floor of any JWT verification;
//! - `verify_uncached/<alg>`: `Verifier::verify` on a token it has not seen (strict parsing,
//!   key lookup, signature, claims, identity headers, cache insert), cycling through 1,024
//!   distinct tokens with a one-entry cache so that (nearly) every call misses;
//! - `verify_cached/<alg>`: `Verifier::verify` on a token already in the cache;
//! - `route_match/*`: `Router::lookup` with 1,000 routes;
//! - `identity_headers/inject`: `Identity::headers` inserted into a `RequestHeader`, as the
//!   proxy does for every authenticated request.
//!
//! `bench/run.sh` runs this with `cargo bench -p portcullis-gateway --bench verifier` and uses
//! `signature/<alg>` as the "bare signature verification cost" of the many-tokens target.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::Method;
use jsonwebtoken::Algorithm;
use pingora::http::RequestHeader;
use portcullis_gateway::bench_internals::{
    Action, FixedResponse, HeaderOps, HostHeader, HostMatch, PathMatch, PathRewrite, Route,
    RouteMatch, Router,
};
use portcullis_gateway::{
    hmac_key, parse_jwks, AuthMode, Identity, IdentityHeaderNames, IdentityPrefix, Issuer,
    IssuerKeys, KeySource, RefreshPolicy, RoutePolicy, TokenCache, Verifier, VerifyKey,
    VerifyObserver,
};
use regex::Regex;

#[path = "../../bench/tokengen/src/mint.rs"]
mod mint;

const ISS: &str = "https://bench.portcullis.test";
const ISS_HS: &str = "https://bench-hs.portcullis.test";
const AUD: &str = "demo";
/// Distinct tokens per algorithm for the uncached case.
const POOL: usize = 1024;

/// Counts cache hits so the uncached benchmark can show it really missed.
#[derive(Default)]
struct Counter {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl VerifyObserver for Counter {
    fn cache(&self, hit: bool) {
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn issuer(name: &str, iss: &str, keys: Vec<VerifyKey>, algorithms: Vec<Algorithm>) -> Arc<Issuer> {
    Arc::new(Issuer {
        name: name.into(),
        iss: iss.into(),
        keys: IssuerKeys::new(
            name.into(),
            KeySource::Static(keys),
            RefreshPolicy::default(),
        ),
        algorithms,
        audiences: vec![AUD.into()],
        leeway: 30,
        typ: vec!["at+jwt".into()],
        required: true,
        revocations: None,
    })
}

struct Fixture {
    keys: Vec<mint::BenchKey>,
    issuers: Vec<Arc<Issuer>>,
}

impl Fixture {
    fn new() -> Fixture {
        let keys: Vec<mint::BenchKey> = ["ES256", "RS256", "EdDSA", "HS256"]
            .iter()
            .map(|a| mint::BenchKey::generate(a))
            .collect();
        let jwks = serde_json::json!({
            "keys": keys.iter().filter_map(mint::BenchKey::public_jwk).collect::<Vec<_>>()
        });
        let public = parse_jwks(jwks.to_string().as_bytes(), false).expect("bench JWKS");
        let hs = &keys[3];
        let secret =
            hmac_key(hs.hmac_secret().expect("HS256 secret"), Some(&hs.kid)).expect("HMAC key");
        let issuers = vec![
            issuer(
                "bench",
                ISS,
                public,
                vec![Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA],
            ),
            issuer("bench-hs", ISS_HS, vec![secret], vec![Algorithm::HS256]),
        ];
        Fixture { keys, issuers }
    }

    fn verifier(&self, cache_entries: u64) -> Verifier {
        Verifier::new(
            self.issuers.clone(),
            8 * 1024,
            1,
            Arc::new(TokenCache::new(cache_entries)),
        )
    }

    fn token(&self, key: &mint::BenchKey, i: usize) -> String {
        let iss = if key.alg == "HS256" { ISS_HS } else { ISS };
        key.token(&mint::claims(iss, AUD, i, 3600))
    }

    fn verify_key(&self, key: &mint::BenchKey) -> Arc<VerifyKey> {
        let issuer = if key.alg == "HS256" {
            &self.issuers[1]
        } else {
            &self.issuers[0]
        };
        let set = issuer.keys.current().expect("static keys");
        let found = set
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(key.kid.as_str()))
            .expect("key by kid")
            .clone();
        found
    }
}

fn algorithm(name: &str) -> Algorithm {
    match name {
        "ES256" => Algorithm::ES256,
        "RS256" => Algorithm::RS256,
        "EdDSA" => Algorithm::EdDSA,
        _ => Algorithm::HS256,
    }
}

fn verification(c: &mut Criterion) {
    let fx = Fixture::new();

    let mut group = c.benchmark_group("signature");
    for key in &fx.keys {
        let token = fx.token(key, 0);
        let (input, sig) = token.rsplit_once('.').expect("compact JWS");
        let vk = fx.verify_key(key);
        let alg = algorithm(key.alg);
        assert!(jsonwebtoken::crypto::verify(sig, input.as_bytes(), &vk.key, alg).unwrap());
        group.bench_function(key.alg, |b| {
            b.iter(|| {
                jsonwebtoken::crypto::verify(
                    black_box(sig),
                    black_box(input.as_bytes()),
                    &vk.key,
                    alg,
                )
                .unwrap()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("verify_uncached");
    for key in &fx.keys {
        let pool: Vec<String> = (0..POOL).map(|i| fx.token(key, i)).collect();
        // A one-entry cache: each token is inserted (as in the gateway) but evicted long
        // before it comes round again.
        let verifier = fx.verifier(1);
        let counter = Counter::default();
        let mut i = 0usize;
        group.bench_function(key.alg, |b| {
            b.iter(|| {
                let t = &pool[i % POOL];
                i = i.wrapping_add(1);
                futures::executor::block_on(verifier.verify(black_box(t), &counter))
                    .expect("valid token")
            })
        });
        let hits = counter.hits.load(Ordering::Relaxed);
        let misses = counter.misses.load(Ordering::Relaxed);
        // Nothing to say when a filter on the command line skipped this benchmark.
        if hits + misses == 0 {
            continue;
        }
        eprintln!(
            "verify_uncached/{}: cache hits {hits} of {} calls",
            key.alg,
            hits + misses
        );
    }
    group.finish();

    let mut group = c.benchmark_group("verify_cached");
    for key in &fx.keys {
        let token = fx.token(key, 0);
        let verifier = fx.verifier(1000);
        let counter = Counter::default();
        futures::executor::block_on(verifier.verify(&token, &counter)).expect("valid token");
        group.bench_function(key.alg, |b| {
            b.iter(|| {
                futures::executor::block_on(verifier.verify(black_box(&token), &counter))
                    .expect("valid token")
            })
        });
        assert_eq!(
            counter.misses.load(Ordering::Relaxed),
            1,
            "one miss, then hits"
        );
    }
    group.finish();

    // Identity headers into the upstream request, as the proxy's upstream_request_filter does.
    let key = &fx.keys[0];
    let token = fx.token(key, 0);
    let verifier = fx.verifier(1000);
    let verified =
        futures::executor::block_on(verifier.verify(&token, &Counter::default())).unwrap();
    let identity = Identity {
        token: verified,
        extra: Vec::new(),
    };
    let names = IdentityHeaderNames::new(&IdentityPrefix::new("X-Auth-"));
    let mut base = RequestHeader::build("GET", b"/api/orders", None).unwrap();
    for (n, v) in [
        ("Host", "127.0.0.1:8080"),
        ("User-Agent", "wrk"),
        ("Accept", "*/*"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Real-IP", "127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Request-Id", "0123456789abcdef0123456789abcdef"),
    ] {
        base.insert_header(n, v).unwrap();
    }
    let mut group = c.benchmark_group("identity_headers");
    group.bench_function("inject", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |req| {
                for (name, value) in identity.headers(&names) {
                    req.insert_header(name.clone(), value.clone()).unwrap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn route(name: String, path: PathMatch) -> Arc<Route> {
    Arc::new(Route {
        name,
        host: HostMatch::Any,
        path,
        methods: Vec::new(),
        auth: AuthMode::Required,
        action: Action::Respond(FixedResponse {
            status: 200,
            body: Bytes::new(),
            location: None,
        }),
        rewrite: PathRewrite::None,
        host_header: HostHeader::Preserve,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        max_body_size: None,
        client_body_timeout: std::time::Duration::from_secs(60),
        limits: Vec::new(),
        policy: RoutePolicy::default(),
        cors: None,
    })
}

fn route_matching(c: &mut Criterion) {
    fn found(m: RouteMatch<'_>) -> bool {
        matches!(m, RouteMatch::Found(_))
    }
    // 1,000 prefix routes (`/svc0000/` … `/svc0999/`), the common shape of a big config.
    let prefixes = Router::new(
        (0..1000)
            .map(|i| route(format!("p{i}"), PathMatch::Prefix(format!("/svc{i:04}/"))))
            .collect(),
    );
    // 1,000 mixed routes: 800 prefixes of varied depth, 150 exact paths, 50 regexes.
    let mut mixed = Vec::new();
    for i in 0..800 {
        let path = if i % 2 == 0 {
            format!("/svc{i:04}/")
        } else {
            format!("/team{}/svc{i:04}/v1/", i % 10)
        };
        mixed.push(route(format!("p{i}"), PathMatch::Prefix(path)));
    }
    for i in 0..150 {
        mixed.push(route(
            format!("e{i}"),
            PathMatch::Exact(format!("/status/{i:04}")),
        ));
    }
    for i in 0..50 {
        mixed.push(route(
            format!("r{i}"),
            PathMatch::Regex(Regex::new(&format!("^/re{i:02}/v[0-9]+/items/[0-9]+$")).unwrap()),
        ));
    }
    let mixed = Router::new(mixed);

    let mut group = c.benchmark_group("route_match");
    let get = Method::GET;
    let cases: [(&str, &Router, &str, bool); 6] = [
        ("prefix_1000_first", &prefixes, "/svc0000/orders/42", true),
        ("prefix_1000_last", &prefixes, "/svc0999/orders/42", true),
        ("prefix_1000_miss", &prefixes, "/nope/orders/42", false),
        ("mixed_1000_exact", &mixed, "/status/0149", true),
        (
            "mixed_1000_prefix",
            &mixed,
            "/team7/svc0797/v1/orders/42",
            true,
        ),
        ("mixed_1000_miss", &mixed, "/nope/orders/42", false),
    ];
    for (name, router, path, hit) in cases {
        assert_eq!(
            found(router.lookup("api.example.com", path, &get)),
            hit,
            "{name}"
        );
        group.bench_function(name, |b| {
            b.iter(|| found(router.lookup(black_box("api.example.com"), black_box(path), &get)))
        });
    }
    group.finish();
}

/// The revocation check on the hot path: a cached ES256 token through an issuer without a
/// feed, and through one holding 1,000,000 revoked sessions (the token's not among them), and
/// the check alone.
fn revocation(c: &mut Criterion) {
    use portcullis_gateway::bench_internals::{load_revoked_sessions, revocation_check};
    use portcullis_gateway::{FeedSpec, FeedUrl, Revocations, StalePolicy};
    use std::time::Duration;

    let fx = Fixture::new();
    let key = &fx.keys[0];
    let token = fx.token(key, 0);
    let feed = Revocations::new(
        "bench".into(),
        FeedSpec {
            url: FeedUrl::Fixed("http://127.0.0.1:1/v1/revocations".into()),
            token: "bench".into(),
            max_stale: Duration::from_secs(3600),
            on_stale: StalePolicy::Accept,
            timeout: Duration::from_secs(35),
        },
    );
    load_revoked_sessions(&feed, "revoked-session-", 1_000_000);
    let with_feed = Issuer {
        revocations: Some(feed.clone()),
        ..Issuer::clone(&fx.issuers[0])
    };
    let verifiers = [
        ("verify_cached/no_feed", fx.issuers.clone()),
        ("verify_cached/1M_revoked", vec![Arc::new(with_feed)]),
    ];
    let mut group = c.benchmark_group("revocation");
    for (name, issuers) in verifiers {
        let verifier = Verifier::new(issuers, 8 * 1024, 1, Arc::new(TokenCache::new(1000)));
        let counter = Counter::default();
        let verified = futures::executor::block_on(verifier.verify(&token, &counter))
            .expect("valid, not revoked");
        group.bench_function(name, |b| {
            b.iter(|| {
                futures::executor::block_on(verifier.verify(black_box(&token), &counter))
                    .expect("valid token")
            })
        });
        if verified.issuer.revocations.is_some() {
            group.bench_function("check/1M_revoked", |b| {
                b.iter(|| revocation_check(&feed, black_box(&verified)).expect("not revoked"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, verification, route_matching, revocation);
criterion_main!(benches);
