//! Rate and concurrency limits (`limit:`) end to end: every key kind, burst, the 429 answer
//! and its headers, the access log and metrics, identity limits that unauthenticated
//! requests cannot spend, spoofed forwarding headers, and a flood of distinct keys.

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_tests::jwt::{self, TestKey};
use portcullis_tests::*;

const ISS: &str = "https://limits.issuer.test";

/// A gateway with one issuer (static key) and the given routes to a demo upstream; the access
/// log goes to `access.log` in `dir`.
fn start(dir: &Path, key: &TestKey, extra: &str, routes: &str) -> (Gateway, Upstream) {
    start_with(dir, key, "", extra, routes)
}

/// [`start`] with lines added to the `server:` block (indented by two spaces).
fn start_with(
    dir: &Path,
    key: &TestKey,
    server: &str,
    extra: &str,
    routes: &str,
) -> (Gateway, Upstream) {
    let up = start_upstream("app", dir, &[]);
    // A JWKS file keeps the key's `kid` (a PEM file has none).
    let pem = dir.join("issuer.jwks.json");
    std::fs::write(&pem, jwt::jwks(&[key]).to_string()).expect("write JWKS");
    let body = format!(
        "{extra}access_log:\n  path: {log}\n  format: combined\nissuers:\n  - name: main\n    issuer: {ISS}\n    key_file: {pem}\n    audiences: [demo]\nupstreams:\n  app:\n    backends: [\"127.0.0.1:{up_port}\"]\nroutes:\n{routes}",
        log = dir.join("access.log").display(),
        pem = pem.display(),
        up_port = up.port
    );
    let gw = start_gateway_server(dir, server, &body);
    (gw, up)
}

fn token(key: &TestKey, sub: &str, extra: &[(&str, serde_json::Value)]) -> String {
    let mut claims = jwt::claims(ISS, sub, "demo", 300);
    for (k, v) in extra {
        claims[*k] = v.clone();
    }
    jwt::sign(key, "ES256", jwt::header(key.kid(), "ES256"), claims)
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    raw_get(gw.port, path, headers)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("metrics text");
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

fn assert_limited(resp: &RawResponse, name: &str, quota: &str, what: &str) {
    assert_eq!(resp.status, 429, "{what}: expected 429, got {resp:?}");
    assert!(
        resp.header("x-demo-server").is_none(),
        "{what}: the upstream answered a limited request"
    );
    assert_eq!(resp.json()["error"], "rate_limited", "{what}");
    let retry: u64 = resp
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no numeric Retry-After in {resp:?}"));
    assert!(retry >= 1, "{what}: Retry-After {retry}");
    assert_eq!(
        resp.header("ratelimit-policy"),
        Some(format!("\"{name}\";{quota}").as_str()),
        "{what}: RateLimit-Policy"
    );
    assert_eq!(
        resp.header("ratelimit"),
        Some(format!("\"{name}\";r=0;t={retry}").as_str()),
        "{what}: RateLimit"
    );
}

/// `key: ip` with a burst: burst + 1 requests pass, then 429 with every header; a
/// client-supplied `X-Forwarded-For` from an untrusted peer does not open new buckets.
#[test]
fn ip_limits_allow_the_burst_then_answer_429_with_headers() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let routes = "  - name: r\n    match: {path: {prefix: /r/}}\n    auth: public\n    upstream: app\n    limit:\n      - {name: per-ip, key: ip, rate: 1r/m, burst: 2}\n  - name: free\n    match: {path: {prefix: /free/}}\n    auth: public\n    upstream: app\n    limit: []\n";
    let (gw, _up) = start(dir.path(), &key, "", routes);
    for i in 0..3 {
        let r = get(&gw, "/r/x", &[]);
        assert_eq!(r.status, 200, "request {i} within the burst: {r:?}");
    }
    let refused = get(&gw, "/r/x", &[]);
    assert_limited(&refused, "per-ip", "q=1;w=60", "4th request");
    // Rotating X-Forwarded-For from an untrusted peer changes nothing.
    for i in 0..5 {
        let ip = format!("198.51.100.{i}");
        let r = get(&gw, "/r/x", &[("X-Forwarded-For", ip.as_str())]);
        assert_eq!(
            r.status, 429,
            "spoofed X-Forwarded-For {ip} escaped the limit"
        );
    }
    // Another route with `limit: []` is not limited.
    for _ in 0..5 {
        assert_eq!(get(&gw, "/free/x", &[]).status, 200);
    }
    assert_eq!(
        metric(
            &gw,
            "portcullis_rate_limited_total{limit=\"per-ip\",route=\"r\"}"
        ),
        6.0
    );
    let logged = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(dir.path().join("access.log"))
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains(" 429 ") && l.ends_with("limit=per-ip"))
                    .count()
                    == 6
            })
            .unwrap_or(false)
    });
    assert!(
        logged,
        "the access log does not name the limit:\n{}",
        std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default()
    );
}

/// Behind a trusted proxy, the client address from `X-Forwarded-For` is the key: each client
/// has its own bucket.
#[test]
fn ip_limits_key_on_the_forwarded_client_behind_trusted_proxies() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let routes = "  - name: r\n    match: {path: {prefix: /r/}}\n    auth: public\n    upstream: app\n    limit:\n      - {key: ip, rate: 1r/m}\n";
    let (gw, _up) = start(
        dir.path(),
        &key,
        "trusted_proxies: [127.0.0.1/32]\n",
        routes,
    );
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let h = [("X-Forwarded-For", client)];
        assert_eq!(get(&gw, "/r/x", &h).status, 200, "{client}: first request");
        assert_limited(&get(&gw, "/r/x", &h), "r/0", "q=1;w=60", client);
    }
}

/// `key: subject` counts verified users separately, and requests that fail authentication —
/// even with a forged token naming the victim — never spend the victim's budget.
#[test]
fn subject_limits_are_per_user_and_not_spendable_without_a_valid_token() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let forger = TestKey::ec_p256().with_kid("k1");
    let routes = "  - name: api\n    match: {path: {prefix: /api/}}\n    upstream: app\n    limit:\n      - {name: per-user, key: subject, rate: 1r/m, burst: 1}\n";
    let (gw, _up) = start(dir.path(), &key, "", routes);
    let alice = bearer(&token(&key, "alice", &[]));
    let bob = bearer(&token(&key, "bob", &[]));
    // Fifty forged tokens for alice (wrong key) and fifty without any token: all 401.
    let forged = bearer(&token(&forger, "alice", &[]));
    for _ in 0..50 {
        assert_eq!(
            get(&gw, "/api/x", &[("Authorization", forged.as_str())]).status,
            401
        );
        assert_eq!(get(&gw, "/api/x", &[]).status, 401);
    }
    // Alice still has her whole budget: two, then 429.
    for i in 0..2 {
        let r = get(&gw, "/api/x", &[("Authorization", alice.as_str())]);
        assert_eq!(
            r.status, 200,
            "alice request {i} (her budget was spent by others?)"
        );
    }
    assert_limited(
        &get(&gw, "/api/x", &[("Authorization", alice.as_str())]),
        "per-user",
        "q=1;w=60",
        "alice's third",
    );
    // A new token of the same user shares her budget; bob has his own.
    let alice2 = bearer(&token(&key, "alice", &[]));
    assert_eq!(
        get(&gw, "/api/x", &[("Authorization", alice2.as_str())]).status,
        429
    );
    assert_eq!(
        get(&gw, "/api/x", &[("Authorization", bob.as_str())]).status,
        200
    );
}

/// `claim:<path>`, `client` and `header:<name>` keys; requests without the key are not counted.
#[test]
fn claim_client_and_header_keys() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let routes = "  - name: tenant\n    match: {path: {prefix: /tenant/}}\n    upstream: app\n    limit:\n      - {key: \"claim:org.id\", rate: 1r/m}\n  - name: client\n    match: {path: {prefix: /client/}}\n    upstream: app\n    limit:\n      - {key: client, rate: 1r/m}\n  - name: hdr\n    match: {path: {prefix: /hdr/}}\n    auth: public\n    upstream: app\n    limit:\n      - {key: \"header:X-Api-Key\", rate: 1r/m}\n";
    let (gw, _up) = start(dir.path(), &key, "", routes);
    let org =
        |sub: &str, id: &str| bearer(&token(&key, sub, &[("org", serde_json::json!({"id": id}))]));
    let (u1, u2, u3) = (org("u1", "acme"), org("u2", "acme"), org("u3", "globex"));
    assert_eq!(
        get(&gw, "/tenant/x", &[("Authorization", u1.as_str())]).status,
        200
    );
    // Another user of the same organisation shares its budget.
    assert_limited(
        &get(&gw, "/tenant/x", &[("Authorization", u2.as_str())]),
        "tenant/0",
        "q=1;w=60",
        "second acme user",
    );
    assert_eq!(
        get(&gw, "/tenant/x", &[("Authorization", u3.as_str())]).status,
        200
    );
    // A token without the claim is not counted.
    let plain = bearer(&token(&key, "u4", &[]));
    for _ in 0..3 {
        assert_eq!(
            get(&gw, "/tenant/x", &[("Authorization", plain.as_str())]).status,
            200
        );
    }

    let svc = |sub: &str, client: &str| {
        bearer(&token(
            &key,
            sub,
            &[("client_id", serde_json::json!(client))],
        ))
    };
    let (a1, a2, b1) = (
        svc("s1", "billing"),
        svc("s2", "billing"),
        svc("s3", "search"),
    );
    assert_eq!(
        get(&gw, "/client/x", &[("Authorization", a1.as_str())]).status,
        200
    );
    assert_eq!(
        get(&gw, "/client/x", &[("Authorization", a2.as_str())]).status,
        429
    );
    assert_eq!(
        get(&gw, "/client/x", &[("Authorization", b1.as_str())]).status,
        200
    );

    assert_eq!(get(&gw, "/hdr/x", &[("X-Api-Key", "k-1")]).status, 200);
    assert_eq!(get(&gw, "/hdr/x", &[("X-Api-Key", "k-1")]).status, 429);
    assert_eq!(get(&gw, "/hdr/x", &[("X-Api-Key", "k-2")]).status, 200);
    for _ in 0..3 {
        assert_eq!(get(&gw, "/hdr/x", &[]).status, 200, "no key, not counted");
    }
}

/// `concurrency` (like `limit_conn`): only that many requests of one key in flight; the slot
/// comes back when a request ends.
#[test]
fn concurrency_limits_bound_requests_in_flight() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let routes = "  - name: slow\n    match: {path: {prefix: /slow/}}\n    auth: public\n    upstream: app\n    limit:\n      - {name: two-at-once, key: ip, concurrency: 2}\n";
    let (gw, _up) = start(dir.path(), &key, "", routes);
    let port = gw.port;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                raw_get(port, "/slow/x", &[("X-Demo-Delay-Ms", "1500")]).status
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let third = get(&gw, "/slow/x", &[]);
    assert_limited(&third, "two-at-once", "q=2", "third concurrent request");
    assert_eq!(third.header("retry-after"), Some("1"));
    for h in slow {
        assert_eq!(h.join().expect("slow request"), 200);
    }
    assert_eq!(
        get(&gw, "/slow/x", &[]).status,
        200,
        "slots were not given back"
    );
}

/// A flood of distinct keys (spoofed client addresses through a trusted proxy) far beyond
/// `rate_limit_keys` neither grows memory nor breaks limiting for the keys that follow.
#[test]
fn a_flood_of_distinct_keys_keeps_memory_bounded() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let routes = "  - name: r\n    match: {path: {prefix: /r/}}\n    auth: public\n    upstream: app\n    limit:\n      - {key: ip, rate: 1r/m, burst: 1}\n";
    let extra = "trusted_proxies: [127.0.0.1/32]\n";
    let server = "  limits:\n    rate_limit_keys: 1024\n";
    let (gw, _up) = start_with(dir.path(), &key, server, extra, routes);
    let rss = |pid: i32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    // Warm up (pools, lazy statics), then measure across 8,000 distinct keys on keep-alive
    // connections (a new one every 500 requests: `keepalive_requests` is 1000).
    let port = gw.port;
    let connect = move || {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s
    };
    let request =
        |ip: String| format!("GET /r/x HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: {ip}\r\n\r\n");
    let mut s = connect();
    for i in 0..200 {
        let r = raw_request(&mut s, &request(format!("10.9.{}.{}", i / 256, i % 256)));
        assert_eq!(r.status, 200);
    }
    let before = rss(gw.proc.pid());
    let started = Instant::now();
    for i in 0..8000u32 {
        if i % 500 == 0 {
            s = connect();
        }
        let ip = format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256);
        let r = raw_request(&mut s, &request(ip));
        assert_eq!(r.status, 200, "distinct key {i}");
    }
    let after = rss(gw.proc.pid());
    eprintln!(
        "8,000 distinct keys in {:?}: RSS {before} kB -> {after} kB",
        started.elapsed()
    );
    assert!(
        after < before + 4096,
        "RSS grew from {before} kB to {after} kB over a flood of distinct keys"
    );
    // Limiting still works for a new key: burst + 1, then 429.
    let mut s = connect();
    let victim = request("192.0.2.77".into());
    assert_eq!(raw_request(&mut s, &victim).status, 200);
    assert_eq!(raw_request(&mut s, &victim).status, 200);
    assert_eq!(raw_request(&mut s, &victim).status, 429);
}

/// Bad `limit:` entries are config errors with file and line.
#[test]
fn limit_config_errors_name_file_and_line() {
    let dir = tempdir();
    let cases = [
        ("{key: ip, rate: 10r/x}", "limit.rate: invalid rate"),
        (
            "{key: user, rate: 10r/s}",
            "limit.key: \"user\" is not one of",
        ),
        ("{key: ip}", "limit: missing `rate`"),
        ("{key: ip, rate: 1r/s, concurrency: 2}", "not both"),
        (
            "{key: ip, concurrency: 2, burst: 3}",
            "only a `rate` limit has a burst",
        ),
        ("{key: \"claim:a..b\", rate: 1r/s}", "not a claim path"),
        ("{name: \"bad name\", key: ip, rate: 1r/s}", "limit.name"),
    ];
    for (i, (entry, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(
            &file,
            format!(
                "{}listeners:\n  - address: 127.0.0.1:{}\nroutes:\n  - name: r\n    match: {{path: {{prefix: /}}}}\n    auth: public\n    return: 200 \"ok\"\n    limit:\n      - {entry}\n",
                server_block(dir.path()),
                free_port()
            ),
        )
        .expect("write config");
        let (code, out) = check_config(&file);
        assert_eq!(code, 1, "{entry}: -t accepted it:\n{out}");
        let text = std::fs::read_to_string(&file).expect("read back");
        let line = text
            .lines()
            .position(|l| l.contains(entry))
            .expect("entry line")
            + 1;
        let loc = format!("{}:{line}:", file.display());
        assert!(
            out.contains(want) && out.contains(&loc),
            "{entry}: expected {want:?} at {loc}, got:\n{out}"
        );
    }
    // One name is one budget: two different rules may not share it.
    let file = dir.path().join("clash.yaml");
    std::fs::write(
        &file,
        format!(
            "{}  limit:\n    - {{name: shared, key: ip, rate: 1r/s}}\nlisteners:\n  - address: 127.0.0.1:{}\nroutes:\n  - name: r\n    match: {{path: {{prefix: /}}}}\n    auth: public\n    return: 200 \"ok\"\n    limit:\n      - {{name: shared, key: ip, rate: 2r/s}}\n",
            server_block(dir.path()),
            free_port()
        ),
    )
    .expect("write config");
    let (code, out) = check_config(&file);
    assert_eq!(code, 1, "clashing names accepted:\n{out}");
    assert!(out.contains("a different rule named \"shared\""), "{out}");
}

/// `SIGHUP` applies changed limits: a route's `limit:` and `server.limits.max_body_size`.
#[test]
fn limits_reload_with_sighup() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let routes = "  - name: r\n    match: {path: {prefix: /r/}}\n    auth: public\n    upstream: app\n    limit:\n      - {key: ip, rate: 1r/m}\n";
    let (gw, _up) = start(dir.path(), &key, "", routes);
    assert_eq!(get(&gw, "/r/x", &[]).status, 200);
    assert_eq!(get(&gw, "/r/x", &[]).status, 429);
    let post = |len: usize| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let body = "a".repeat(len);
        raw_request(
            &mut s,
            &format!(
                "POST /r/x HTTP/1.1\r\nHost: gw\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
            ),
        )
        .status
    };
    let config = std::fs::read_to_string(&gw.config).expect("config");
    let changed = config
        .replacen(
            "server:\n",
            "server:\n  limits:\n    max_body_size: 2k\n",
            1,
        )
        .replace(
            "    limit:\n      - {key: ip, rate: 1r/m}\n",
            "    limit: []\n",
        );
    std::fs::write(&gw.config, changed).expect("write config");
    gw.proc.signal(libc::SIGHUP);
    let reloaded = wait_for(Duration::from_secs(10), || {
        metric(&gw, "portcullis_config_reloads_total{result=\"ok\"}") >= 1.0
    });
    assert!(reloaded, "no reload:\n{}", gw.proc.stderr_text());
    for _ in 0..3 {
        assert_eq!(
            get(&gw, "/r/x", &[]).status,
            200,
            "the limit is still applied"
        );
    }
    assert_eq!(post(2048), 200);
    assert_eq!(post(2049), 413, "the new body limit is not applied");
}
