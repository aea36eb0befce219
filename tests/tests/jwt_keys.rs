//! JWKS handling end to end: readiness waiting for keys, unknown-`kid` refetch (single flight,
//! cooldown), keys that must be ignored, rotation invalidating cached tokens, outages with and
//! beyond `max_stale`, token expiry in the cache, ETag revalidation, OIDC discovery, local key
//! files, JWKS over a Unix socket, and the key metrics.
//!
//! Every test runs its own gateway against its own JWKS server (or key files), with short
//! refresh intervals where timing matters, and only bounded waits.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portcullis_tests::jwt::{self, JwksServer, TestKey};
use portcullis_tests::*;
use serde_json::json;

/// The audience every issuer here expects and every token carries.
const AUD: &str = "demo";

// Client-safe descriptions the gateway puts in `WWW-Authenticate` (see verify.rs).
const KEYS_UNAVAILABLE: &str = "the issuer's signing keys are unavailable";
const UNKNOWN_KEY: &str = "the token was signed with an unknown key";
const KEY_RETIRED: &str = "the token's signing key has been retired";
const EXPIRED: &str = "the token has expired";
const BAD_SIGNATURE: &str = "the token signature is invalid";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A gateway with its upstream and temporary directory (dropped in this order).
struct Env {
    gw: Gateway,
    _up: Upstream,
    _dir: tempfile::TempDir,
}

/// Starts an upstream and a gateway in `dir` with `issuers` (a complete `issuers:` block) and
/// one route, `/api/` → the upstream, that requires a token (the default).
fn start_in(dir: tempfile::TempDir, issuers: &str) -> Env {
    let up = start_upstream("app", dir.path(), &[]);
    let body = format!(
        "{issuers}upstreams:\n  app:\n    backends: [\"127.0.0.1:{port}\"]\nroutes:\n  - name: api\n    match: {{path: {{prefix: /api/}}}}\n    upstream: app\n",
        port = up.port
    );
    let gw = start_gateway(dir.path(), &body);
    Env {
        gw,
        _up: up,
        _dir: dir,
    }
}

/// [`start_in`] with a fresh directory.
fn start(issuers: &str) -> Env {
    start_in(tempdir(), issuers)
}

/// An `issuers:` block with one issuer `idp` fetching from `jwks`; `refresh` is the flow
/// mapping of the `refresh:` key (e.g. `{min: 1s, default: 1s}`), `extra` more lines
/// indented by four spaces.
fn remote_issuer(jwks: &JwksServer, refresh: &str, extra: &str) -> String {
    format!(
        "issuers:\n  - name: idp\n    issuer: {iss}\n    jwks_url: {url}\n    audiences: [{AUD}]\n    refresh: {refresh}\n{extra}",
        iss = jwks.issuer_url(),
        url = jwks.url(),
    )
}

/// An ES256 token for `key` (its own kid) from issuer `iss`, valid for `ttl` seconds.
fn es256(key: &TestKey, iss: &str, ttl: i64) -> String {
    es256_kid(key, key.kid(), iss, ttl)
}

/// An ES256 token signed by `key` but naming `kid`.
fn es256_kid(key: &TestKey, kid: &str, iss: &str, ttl: i64) -> String {
    jwt::sign(
        key,
        "ES256",
        jwt::header(kid, "ES256"),
        jwt::claims(iss, "user-1", AUD, ttl),
    )
}

/// GET /api/x with the token as a bearer token.
fn call(gw: &Gateway, token: &str) -> RawResponse {
    raw_get(
        gw.port,
        "/api/x",
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

/// Status, challenge and body of a response, for assertion messages.
fn explain(resp: &RawResponse) -> String {
    format!(
        "status {} www-authenticate {:?} body {}",
        resp.status,
        resp.header("www-authenticate"),
        String::from_utf8_lossy(&resp.body)
    )
}

/// Asserts the token passes (200 from the upstream).
#[track_caller]
fn assert_passes(gw: &Gateway, token: &str, what: &str) {
    let resp = call(gw, token);
    assert_eq!(resp.status, 200, "{what}: {}", explain(&resp));
}

/// Asserts a 401 `invalid_token` whose description is `description`.
#[track_caller]
fn assert_refused(resp: &RawResponse, description: &str, what: &str) {
    assert_eq!(resp.status, 401, "{what}: {}", explain(resp));
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("error=\"invalid_token\"")
            && challenge.contains(&format!("error_description=\"{description}\"")),
        "{what}: expected {description:?}; {}",
        explain(resp)
    );
}

/// The admin `/readyz` answer.
fn readyz(gw: &Gateway) -> RawResponse {
    raw_get(gw.admin_port, "/readyz", &[])
}

/// Waits (bounded) until `/readyz` answers 200.
#[track_caller]
fn wait_ready(gw: &Gateway) {
    let ok = wait_for(Duration::from_secs(10), || readyz(gw).status == 200);
    assert!(
        ok,
        "gateway never became ready: {}\n{}",
        String::from_utf8_lossy(&readyz(gw).body),
        gw.proc.stderr_text()
    );
}

/// Waits (bounded) until the series reaches a value for which `ok` holds; returns the last
/// value seen.
fn wait_metric(
    gw: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> Option<f64> {
    let mut last = None;
    wait_for(Duration::from_secs(5), || {
        last = metric_value(&gw.metrics(), name, labels);
        last.is_some_and(&ok)
    });
    last
}

/// Requests for the JWKS path that carried `If-None-Match`, with its value.
fn conditional_fetches(jwks: &JwksServer) -> Vec<String> {
    jwks.request_log()
        .iter()
        .filter(|r| r.path.split('?').next() == Some(jwt::JWKS_PATH))
        .filter_map(|r| r.header("if-none-match").map(str::to_string))
        .collect()
}

/// A minimal HTTP/1.1 server on a Unix socket answering every request with one JWKS
/// (`Content-Length`, `Connection: close`), one request per connection. Stops when dropped.
struct UnixJwks {
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl UnixJwks {
    fn start(socket: &Path, body: Vec<u8>) -> UnixJwks {
        let listener = UnixListener::bind(socket).expect("bind unix socket");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (thread_stop, thread_requests) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let mut stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let line = text.lines().next().unwrap_or_default().to_string();
                thread_requests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line);
                let mut resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                resp.extend_from_slice(&body);
                let _ = stream.write_all(&resp);
                let _ = stream.flush();
            }
        });
        UnixJwks {
            stop,
            requests,
            thread: Some(thread),
        }
    }

    /// Request lines received so far (`GET /jwks.json HTTP/1.1`).
    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for UnixJwks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Readiness
// ---------------------------------------------------------------------------------------------

#[test]
fn readiness_waits_for_keys_and_the_route_refuses_meanwhile() {
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
    jwks.set_available(false);
    let env = start(&remote_issuer(&jwks, "{retry: 300ms, default: 1h}", ""));
    let gw = &env.gw;
    assert!(
        jwks.wait_for_fetches(1, Duration::from_secs(10)),
        "the gateway never tried to fetch the JWKS"
    );

    let token = es256(&key, &jwks.issuer_url(), 300);
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        let r = readyz(gw);
        assert_eq!(
            r.status,
            503,
            "ready without keys: {}",
            String::from_utf8_lossy(&r.body)
        );
        let doc = r.json();
        assert_eq!(doc["status"], "not_ready");
        assert_eq!(doc["issuers"]["idp"]["keys"], false, "{doc}");
        assert_refused(&call(gw, &token), KEYS_UNAVAILABLE, "before any keys");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        jwks.fetch_count() >= 2,
        "failed fetches are retried (retry: 300ms): {} fetches",
        jwks.fetch_count()
    );

    jwks.set_available(true);
    let since = Instant::now();
    assert!(
        wait_for(Duration::from_secs(5), || readyz(gw).status == 200),
        "not ready 5 s after the JWKS came back: {}",
        String::from_utf8_lossy(&readyz(gw).body)
    );
    eprintln!("ready {:?} after the JWKS came back", since.elapsed());
    assert_eq!(readyz(gw).json()["issuers"]["idp"]["keys"], true);
    assert_passes(gw, &token, "valid token once keys arrived");
}

// ---------------------------------------------------------------------------------------------
// 2. Unknown kid → one refetch
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_kid_of_a_newly_published_key_is_fetched_once_and_accepted() {
    let k1 = TestKey::ec_p256().with_kid("k1");
    let k2 = TestKey::ec_p256().with_kid("k2");
    let jwks = JwksServer::serving(&[&k1]);
    let iss = jwks.issuer_url();
    let env = start(&remote_issuer(&jwks, "{default: 1h}", ""));
    let gw = &env.gw;
    wait_ready(gw);
    assert_passes(gw, &es256(&k1, &iss, 300), "k1 token");
    let before = jwks.fetch_count();
    assert!(before >= 1);

    // k2 is published after the gateway's fetch; the next scheduled refresh is an hour away.
    jwks.set_keys(vec![k1.public_jwk(), k2.public_jwk()]);
    // Four different k2 tokens at once: they share one refetch.
    let results: Vec<RawResponse> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let token = es256(&k2, &iss, 300);
                s.spawn(move || call(gw, &token))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(
            r.status,
            200,
            "k2 token right after rotation: {}",
            explain(r)
        );
    }
    assert_eq!(
        jwks.fetch_count(),
        before + 1,
        "exactly one refetch for the unknown kid"
    );

    // Now known: more k2 tokens cause no fetch.
    assert_passes(gw, &es256(&k2, &iss, 300), "another k2 token");
    assert_passes(gw, &es256(&k1, &iss, 300), "k1 still published");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(jwks.fetch_count(), before + 1, "no further fetches");
}

// ---------------------------------------------------------------------------------------------
// 3. Flood of unknown kids
// ---------------------------------------------------------------------------------------------

#[test]
fn a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown() {
    let k1 = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&k1]);
    let iss = jwks.issuer_url();
    let env = start(&remote_issuer(
        &jwks,
        "{default: 1h, unknown_kid_cooldown: 30s}",
        "",
    ));
    let gw = &env.gw;
    wait_ready(gw);
    let before = jwks.fetch_count();

    let started = Instant::now();
    let statuses: Vec<RawResponse> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let n = if t < 4 { 13 } else { 12 }; // 4 * 13 + 4 * 12 = 100
                let tokens: Vec<String> = (0..n)
                    .map(|_| es256_kid(&k1, &jwt::random_id(12), &iss, 300))
                    .collect();
                s.spawn(move || tokens.iter().map(|t| call(gw, t)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(statuses.len(), 100);
    for r in &statuses {
        assert_refused(r, UNKNOWN_KEY, "random kid");
    }
    std::thread::sleep(Duration::from_millis(300));
    let fetched = jwks.fetch_count() - before;
    eprintln!(
        "100 unknown kids in {:?} caused {fetched} fetch(es)",
        started.elapsed()
    );
    assert!(
        fetched <= 2,
        "{fetched} JWKS fetches for 100 unknown kids within one 30 s cooldown"
    );
    assert!(
        fetched >= 1,
        "the first unknown kid should refetch (cooldown not started yet)"
    );

    // The issuer still works for real keys.
    assert_passes(gw, &es256(&k1, &iss, 300), "k1 token after the flood");
    assert_eq!(jwks.fetch_count() - before, fetched);
}

// ---------------------------------------------------------------------------------------------
// 4. Keys a remote JWKS may not contribute
// ---------------------------------------------------------------------------------------------

#[test]
fn remote_symmetric_and_1024_bit_rsa_keys_are_ignored() {
    let good = TestKey::ec_p256().with_kid("good");
    let weak = TestKey::rsa(1024).with_kid("weak");
    let shared = TestKey::hmac(b"0123456789abcdef0123456789abcdef-published").with_kid("shared");
    let jwks = JwksServer::serving(&[&shared, &weak, &good]);
    let iss = jwks.issuer_url();
    let env = start(&remote_issuer(&jwks, "{default: 1h}", ""));
    let gw = &env.gw;
    wait_ready(gw);

    // Only the EC key made it into the set.
    let keys = wait_metric(gw, "portcullis_jwks_keys", &[("issuer", "idp")], |v| {
        v > 0.0
    });
    assert_eq!(
        keys,
        Some(1.0),
        "oct and RSA-1024 keys must be skipped:\n{}",
        gw.metrics()
    );

    let hs = jwt::sign(
        &shared,
        "HS256",
        jwt::header("shared", "HS256"),
        jwt::claims(&iss, "mallory", AUD, 300),
    );
    let resp = call(gw, &hs);
    assert_eq!(
        resp.status,
        401,
        "HS256 with a published secret: {}",
        explain(&resp)
    );
    assert!(resp
        .header("www-authenticate")
        .is_some_and(|c| c.contains("invalid_token")));

    let rs = jwt::sign(
        &weak,
        "RS256",
        jwt::header("weak", "RS256"),
        jwt::claims(&iss, "mallory", AUD, 300),
    );
    // Skipped, so its kid is unknown (not merely a failing signature).
    assert_refused(&call(gw, &rs), UNKNOWN_KEY, "RS256 with a 1024-bit key");

    assert_passes(gw, &es256(&good, &iss, 300), "the good key of the same set");
}

// ---------------------------------------------------------------------------------------------
// 5. Rotation
// ---------------------------------------------------------------------------------------------

#[test]
fn rotation_removes_the_old_key_and_invalidates_its_cached_tokens() {
    let k1 = TestKey::ec_p256().with_kid("k1");
    let k2 = TestKey::ec_p256().with_kid("k2");
    let jwks = JwksServer::serving(&[&k1]);
    let iss = jwks.issuer_url();
    let env = start(&remote_issuer(&jwks, "{min: 1s, default: 1s}", ""));
    let gw = &env.gw;
    wait_ready(gw);

    let token_a = es256(&k1, &iss, 300);
    assert_passes(gw, &token_a, "token A (k1)");
    assert_passes(gw, &token_a, "token A again (cached)");
    let hits = wait_metric(
        gw,
        "portcullis_token_cache_total",
        &[("result", "hit")],
        |v| v >= 1.0,
    );
    assert!(hits >= Some(1.0), "token A was served from the cache");

    let before = jwks.fetch_count();
    jwks.set_keys(vec![k2.public_jwk()]);
    // Only a refresh can turn the cached token A away: it names no unknown kid.
    let mut last = None;
    let refused = wait_for(Duration::from_secs(5), || {
        let r = call(gw, &token_a);
        let done = r.status == 401;
        last = Some(r);
        done
    });
    let last = last.expect("one request");
    assert!(
        refused,
        "cached token A still accepted 5 s after k1 left the JWKS: {}",
        explain(&last)
    );
    assert!(jwks.fetch_count() > before, "a refresh happened");
    assert_refused(&last, KEY_RETIRED, "cached token A after k1 was removed");

    assert_passes(gw, &es256(&k2, &iss, 300), "token B (k2)");
    let resp = call(gw, &token_a);
    assert_eq!(
        resp.status,
        401,
        "token A stays refused: {}",
        explain(&resp)
    );
    let fresh_k1 = es256(&k1, &iss, 300);
    let resp = call(gw, &fresh_k1);
    assert_eq!(resp.status, 401, "a new k1 token: {}", explain(&resp));
}

// ---------------------------------------------------------------------------------------------
// 6. JWKS outage
// ---------------------------------------------------------------------------------------------

#[test]
fn jwks_outage_keeps_the_cached_keys_working() {
    let k1 = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&k1]);
    let iss = jwks.issuer_url();
    let env = start(&remote_issuer(
        &jwks,
        "{min: 1s, default: 1s, retry: 300ms, unknown_kid_cooldown: 1s}",
        "",
    ));
    let gw = &env.gw;
    wait_ready(gw);
    let seen = es256(&k1, &iss, 300);
    assert_passes(gw, &seen, "token before the outage");

    jwks.set_hang_up(true);
    let before = jwks.fetch_count();
    assert!(
        jwks.wait_for_fetches(before + 2, Duration::from_secs(5)),
        "the gateway kept trying during the outage"
    );
    let errors = wait_metric(
        gw,
        "portcullis_jwks_fetches_total",
        &[("issuer", "idp"), ("result", "error")],
        |v| v >= 1.0,
    );
    assert!(
        errors >= Some(1.0),
        "failed fetches are counted:\n{}",
        gw.metrics()
    );

    assert_passes(gw, &seen, "cached token during the outage");
    assert_passes(
        gw,
        &es256(&k1, &iss, 300),
        "new token, known kid, during the outage",
    );
    let unknown = es256_kid(&k1, "not-published", &iss, 300);
    assert_refused(
        &call(gw, &unknown),
        UNKNOWN_KEY,
        "unknown kid during the outage",
    );
    assert_eq!(readyz(gw).status, 200, "still ready with cached keys");
}

#[test]
fn jwks_outage_beyond_max_stale_fails_closed() {
    let k1 = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&k1]);
    let iss = jwks.issuer_url();
    let env = start(&remote_issuer(
        &jwks,
        "{min: 1s, default: 1s, retry: 300ms, max_stale: 2s}",
        "",
    ));
    let gw = &env.gw;
    wait_ready(gw);
    let seen = es256(&k1, &iss, 300);
    assert_passes(gw, &seen, "token before the outage");

    jwks.set_available(false);
    let outage = Instant::now();
    let mut last = None;
    let refused = wait_for(Duration::from_secs(6), || {
        let r = call(gw, &seen);
        let done = r.status == 401;
        last = Some(r);
        done
    });
    let last = last.expect("one request");
    assert!(
        refused,
        "known-kid token still accepted {:?} into the outage (max_stale 2s): {}",
        outage.elapsed(),
        explain(&last)
    );
    eprintln!("keys dropped {:?} into the outage", outage.elapsed());
    assert_refused(&last, KEYS_UNAVAILABLE, "cached token after max_stale");
    assert_refused(
        &call(gw, &es256(&k1, &iss, 300)),
        KEYS_UNAVAILABLE,
        "new known-kid token after max_stale",
    );
    let r = readyz(gw);
    assert_eq!(
        r.status,
        503,
        "not ready without usable keys: {}",
        String::from_utf8_lossy(&r.body)
    );

    // Recovery: keys come back, and so do readiness and the same token.
    jwks.set_available(true);
    assert!(
        wait_for(Duration::from_secs(5), || readyz(gw).status == 200),
        "ready again once the JWKS answers"
    );
    assert_passes(gw, &seen, "token after recovery");
}

// ---------------------------------------------------------------------------------------------
// 7. Expiry of a cached token
// ---------------------------------------------------------------------------------------------

#[test]
fn a_cached_token_is_refused_once_it_expires() {
    let k1 = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&k1]);
    let iss = jwks.issuer_url();
    let env = start(&remote_issuer(&jwks, "{default: 1h}", "    leeway: 0s\n"));
    let gw = &env.gw;
    wait_ready(gw);

    let claims = jwt::claims(&iss, "user-1", AUD, 3);
    let exp = claims["exp"].as_i64().unwrap();
    let token = jwt::sign(&k1, "ES256", jwt::header("k1", "ES256"), claims);
    assert_passes(gw, &token, "fresh token");
    assert_passes(gw, &token, "same token (cache hit)");
    let hits = wait_metric(
        gw,
        "portcullis_token_cache_total",
        &[("result", "hit")],
        |v| v >= 1.0,
    );
    assert!(hits >= Some(1.0), "the second request hit the cache");

    let deadline = Instant::now() + Duration::from_secs(8);
    while jwt::now() < exp + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(jwt::now() > exp, "clock did not pass exp");
    assert_refused(&call(gw, &token), EXPIRED, "same token after exp");
    let expired = wait_metric(gw, "portcullis_auth_total", &[("reason", "expired")], |v| {
        v >= 1.0
    });
    assert!(
        expired >= Some(1.0),
        "counted as expired:\n{}",
        gw.metrics()
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Cache-Control and ETag revalidation
// ---------------------------------------------------------------------------------------------

#[test]
fn refresh_revalidates_with_if_none_match_and_keeps_the_keys() {
    let k1 = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&k1]);
    jwks.set_cache_control(Some("max-age=1".into()));
    let iss = jwks.issuer_url();
    let env = start(&remote_issuer(&jwks, "{min: 1s, default: 1h}", ""));
    let gw = &env.gw;
    wait_ready(gw);
    let token = es256(&k1, &iss, 300);
    assert_passes(gw, &token, "token after the first fetch");

    let etag = jwks.current_etag().expect("the server sends an ETag");
    // max-age=1 (not the 1h default) schedules the refresh; the refresh is conditional and the
    // server answers 304 to a matching If-None-Match.
    assert!(
        wait_for(Duration::from_secs(6), || conditional_fetches(&jwks).len()
            >= 2),
        "no conditional refreshes; requests: {:?}",
        jwks.request_log()
            .iter()
            .map(|r| (
                r.path.clone(),
                r.header("if-none-match").map(str::to_string)
            ))
            .collect::<Vec<_>>()
    );
    let log = jwks.request_log();
    let first = log
        .iter()
        .find(|r| r.path == jwt::JWKS_PATH)
        .expect("first fetch");
    assert_eq!(
        first.header("if-none-match"),
        None,
        "nothing to revalidate the first time"
    );
    for tag in conditional_fetches(&jwks) {
        assert_eq!(
            tag, etag,
            "If-None-Match carries the ETag of the last 200 (→ 304)"
        );
    }
    assert_eq!(jwks.current_etag().as_deref(), Some(etag.as_str()));

    // After the 304s the keys are still there: cached and brand-new tokens pass.
    assert_eq!(readyz(gw).status, 200);
    assert_passes(gw, &token, "cached token after 304s");
    assert_passes(gw, &es256(&k1, &iss, 300), "new token after 304s");
    let ok = wait_metric(
        gw,
        "portcullis_jwks_fetches_total",
        &[("issuer", "idp"), ("result", "ok")],
        |v| v >= 3.0,
    );
    assert!(
        ok >= Some(3.0),
        "a 304 counts as a successful fetch:\n{}",
        gw.metrics()
    );
    assert_eq!(
        metric_value(
            &gw.metrics(),
            "portcullis_jwks_fetches_total",
            &[("issuer", "idp"), ("result", "error")]
        )
        .unwrap_or(0.0),
        0.0,
        "no failed fetches"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. OIDC discovery
// ---------------------------------------------------------------------------------------------

#[test]
fn discovery_finds_the_jwks_uri() {
    let k1 = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&k1]);
    let iss = jwks.issuer_url();
    let env = start(&format!(
        "issuers:\n  - name: idp\n    issuer: {iss}\n    discovery: true\n    audiences: [{AUD}]\n"
    ));
    let gw = &env.gw;
    wait_ready(gw);
    assert_passes(gw, &es256(&k1, &iss, 300), "token of the discovered issuer");

    let paths = jwks.requests();
    let discovery = paths.iter().position(|p| p == jwt::DISCOVERY_PATH);
    let keys = paths.iter().position(|p| p == jwt::JWKS_PATH);
    assert!(
        matches!((discovery, keys), (Some(d), Some(k)) if d < k),
        "discovery document first, then its jwks_uri: {paths:?}"
    );
    let other = TestKey::ec_p256().with_kid("k1");
    assert_refused(
        &call(gw, &es256(&other, &iss, 300)),
        BAD_SIGNATURE,
        "same kid, different key",
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Local key files
// ---------------------------------------------------------------------------------------------

#[test]
fn key_files_pem_and_jwks_verify_without_network() {
    let dir = tempdir();
    let rsa = TestKey::rsa(2048);
    let ed = TestKey::ed25519().with_kid("file-k1");
    let pem_path = dir.path().join("issuer-public.pem");
    let jwks_path = dir.path().join("issuer-keys.json");
    std::fs::write(&pem_path, rsa.public_pem()).expect("write PEM");
    std::fs::write(&jwks_path, jwt::jwks(&[&ed]).to_string()).expect("write JWKS");
    let issuers = format!(
        "issuers:\n  - name: pem\n    issuer: https://pem.issuer.test\n    key_file: {pem}\n    audiences: [{AUD}]\n  - name: file\n    issuer: https://file.issuer.test\n    key_file: {jwks}\n    audiences: [{AUD}]\n",
        pem = pem_path.display(),
        jwks = jwks_path.display(),
    );
    let env = start_in(dir, &issuers);
    let gw = &env.gw;
    // Local keys are there from the start: ready at once, no fetch to wait for.
    wait_ready(gw);
    assert_eq!(readyz(gw).json()["issuers"]["pem"]["keys"], true);
    assert_eq!(readyz(gw).json()["issuers"]["file"]["keys"], true);

    // A PEM key has no kid, so its tokens carry none.
    let rs = jwt::sign(
        &rsa,
        "RS256",
        json!({"alg": "RS256", "typ": "at+jwt"}),
        jwt::claims("https://pem.issuer.test", "user-1", AUD, 300),
    );
    assert_passes(gw, &rs, "RS256 token verified with the PEM key file");
    let ed_token = jwt::sign(
        &ed,
        "EdDSA",
        jwt::header("file-k1", "EdDSA"),
        jwt::claims("https://file.issuer.test", "user-1", AUD, 300),
    );
    assert_passes(gw, &ed_token, "EdDSA token verified with the JWKS key file");

    // The files really are what verifies: another key, or the other issuer's key, fails.
    let other_rsa = TestKey::rsa(2048);
    let forged = jwt::sign(
        &other_rsa,
        "RS256",
        json!({"alg": "RS256", "typ": "at+jwt"}),
        jwt::claims("https://pem.issuer.test", "user-1", AUD, 300),
    );
    assert_refused(&call(gw, &forged), BAD_SIGNATURE, "RS256 with another key");
    let crossed = jwt::sign(
        &ed,
        "EdDSA",
        jwt::header("file-k1", "EdDSA"),
        jwt::claims("https://pem.issuer.test", "user-1", AUD, 300),
    );
    let resp = call(gw, &crossed);
    assert_eq!(
        resp.status,
        401,
        "the JWKS file's key for the PEM issuer: {}",
        explain(&resp)
    );
    let m = gw.metrics();
    assert!(
        metric_value(&m, "portcullis_jwks_fetches_total", &[("issuer", "pem")]).is_none()
            && metric_value(&m, "portcullis_jwks_fetches_total", &[("issuer", "file")]).is_none(),
        "static keys are never fetched:\n{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. JWKS over a Unix socket
// ---------------------------------------------------------------------------------------------

#[test]
fn jwks_url_over_a_unix_socket() {
    let dir = tempdir();
    let k1 = TestKey::ec_p384().with_kid("unix-k1");
    let socket: PathBuf = dir.path().join("jwks.sock");
    let server = UnixJwks::start(&socket, jwt::jwks(&[&k1]).to_string().into_bytes());
    let iss = "https://unix.issuer.test";
    let issuers = format!(
        "issuers:\n  - name: local\n    issuer: {iss}\n    jwks_url: unix:{sock}:/jwks.json\n    audiences: [{AUD}]\n    algorithms: [ES384]\n",
        sock = socket.display()
    );
    let env = start_in(dir, &issuers);
    let gw = &env.gw;
    wait_ready(gw);

    let token = jwt::sign(
        &k1,
        "ES384",
        jwt::header("unix-k1", "ES384"),
        jwt::claims(iss, "user-1", AUD, 300),
    );
    assert_passes(
        gw,
        &token,
        "token verified with keys fetched over the Unix socket",
    );
    let requests = server.requests();
    assert!(
        requests
            .first()
            .is_some_and(|r| r.starts_with("GET /jwks.json ")),
        "the socket server saw the JWKS request: {requests:?}"
    );
    let other = TestKey::ec_p384().with_kid("unix-k1");
    let forged = jwt::sign(
        &other,
        "ES384",
        jwt::header("unix-k1", "ES384"),
        jwt::claims(iss, "user-1", AUD, 300),
    );
    assert_refused(&call(gw, &forged), BAD_SIGNATURE, "same kid, other key");
}

// ---------------------------------------------------------------------------------------------
// 12. Metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn key_and_cache_metrics() {
    let k1 = TestKey::ec_p256().with_kid("k1");
    let k2 = TestKey::ed25519().with_kid("k2");
    let k3 = TestKey::rsa(2048).with_kid("k3");
    let jwks = JwksServer::serving(&[&k1, &k2, &k3]);
    let iss = jwks.issuer_url();
    let env = start(&remote_issuer(&jwks, "{default: 1h}", ""));
    let gw = &env.gw;
    wait_ready(gw);

    let ok = wait_metric(
        gw,
        "portcullis_jwks_fetches_total",
        &[("issuer", "idp"), ("result", "ok")],
        |v| v >= 1.0,
    );
    assert!(ok >= Some(1.0), "fetches ok:\n{}", gw.metrics());
    let keys = wait_metric(gw, "portcullis_jwks_keys", &[("issuer", "idp")], |v| {
        v == 3.0
    });
    assert_eq!(keys, Some(3.0), "keys held:\n{}", gw.metrics());
    let age = metric_value(
        &gw.metrics(),
        "portcullis_jwks_age_seconds",
        &[("issuer", "idp")],
    );
    assert!(
        age.is_some_and(|a| a >= 0.0),
        "age after a success: {age:?}"
    );

    let hit = |m: &str| metric_value(m, "portcullis_token_cache_total", &[("result", "hit")]);
    let token = es256(&k1, &iss, 300);
    assert_passes(gw, &token, "first use");
    assert_eq!(
        hit(&gw.metrics()).unwrap_or(0.0),
        0.0,
        "a first use is no hit"
    );
    assert!(
        metric_value(
            &gw.metrics(),
            "portcullis_token_cache_total",
            &[("result", "miss")]
        ) >= Some(1.0),
        "a first use is a miss"
    );
    assert_passes(gw, &token, "second use");
    assert!(
        hit(&gw.metrics()) >= Some(1.0),
        "a repeated token is a cache hit:\n{}",
        gw.metrics()
    );
}
