//! Browser-facing auth features: login redirects, CORS preflights without a token, and the
//! identity-header signature upstreams can check.

use portcullis_tests::jwt::{self, JwksServer, TestKey};
use portcullis_tests::*;
use std::time::Duration;

fn config(jwks: &JwksServer, upstream: u16, extra_main: &str) -> String {
    format!(
        "{extra_main}issuers:\n  - name: test\n    issuer: {iss}\n    jwks_url: {url}\nupstreams:\n  app:\n    backends: [\"127.0.0.1:{upstream}\"]\nroutes:\n  - name: web\n    match: {{path: {{prefix: /web/}}}}\n    upstream: app\n    login_redirect: \"https://login.example.com/?next={{uri}}\"\n  - name: api\n    match: {{path: {{prefix: /api/}}, methods: [GET, POST]}}\n    upstream: app\n    cors:\n      origins: [\"https://app.example.com\"]\n      methods: [GET, POST]\n      headers: [authorization, content-type]\n      max_age: 10m\n      credentials: true\n",
        iss = jwks.issuer_url(),
        url = jwks.url(),
    )
}

fn wait_ready(gw: &Gateway) {
    assert!(
        wait_for(Duration::from_secs(10), || client()
            .get(gw.admin_url("/readyz"))
            .send()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false)),
        "gateway never became ready"
    );
}

fn token(jwks: &JwksServer, key: &TestKey) -> String {
    let claims = jwt::claims(&jwks.issuer_url(), "user-7", "demo", 300);
    jwt::sign(key, "ES256", jwt::header(key.kid(), "ES256"), claims)
}

#[test]
fn browsers_are_redirected_to_the_login_page_and_apis_get_401() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
    let up = start_upstream("app", dir.path(), &[]);
    let gw = start_gateway(dir.path(), &config(&jwks, up.port, ""));
    wait_ready(&gw);

    let html = raw_get(
        gw.port,
        "/web/page?x=1",
        &[("Accept", "text/html,application/xhtml+xml")],
    );
    assert_eq!(html.status, 302);
    assert_eq!(
        html.header("location"),
        Some("https://login.example.com/?next=%2Fweb%2Fpage%3Fx%3D1")
    );
    let api = raw_get(gw.port, "/web/page", &[("Accept", "application/json")]);
    assert_eq!(
        api.status, 401,
        "non-browser clients get the RFC 6750 answer"
    );
    let ok = raw_get(
        gw.port,
        "/web/page",
        &[
            ("Accept", "text/html"),
            ("Authorization", &format!("Bearer {}", token(&jwks, &key))),
        ],
    );
    assert_eq!(ok.status, 200);
}

#[test]
fn cors_preflight_needs_no_token_and_responses_carry_cors_headers() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
    let up = start_upstream("app", dir.path(), &[]);
    let gw = start_gateway(dir.path(), &config(&jwks, up.port, ""));
    wait_ready(&gw);

    let preflight = |origin: &str, method: &str, headers: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        raw_request(
            &mut s,
            &format!(
                "OPTIONS /api/orders HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: {headers}\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let ok = preflight(
        "https://app.example.com",
        "POST",
        "authorization, content-type",
    );
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert!(ok
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(
        preflight("https://evil.example.com", "POST", "authorization").status,
        403
    );
    // DELETE is not served by the route at all: the preflight fails like the request would.
    let delete = preflight("https://app.example.com", "DELETE", "authorization");
    assert_eq!(delete.status, 405);
    assert_eq!(delete.header("access-control-allow-origin"), None);
    assert_eq!(
        preflight("https://app.example.com", "GET", "x-custom").status,
        403
    );

    // Actual requests: allowed origins get the headers, on errors too (so the app can read
    // the 401), other origins do not.
    let denied = raw_get(
        gw.port,
        "/api/orders",
        &[("Origin", "https://app.example.com")],
    );
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let auth = format!("Bearer {}", token(&jwks, &key));
    let allowed = raw_get(
        gw.port,
        "/api/orders",
        &[
            ("Origin", "https://app.example.com"),
            ("Authorization", &auth),
        ],
    );
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(allowed.header("vary"), Some("Origin"));
    let other = raw_get(
        gw.port,
        "/api/orders",
        &[
            ("Origin", "https://evil.example.com"),
            ("Authorization", &auth),
        ],
    );
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);
}

#[test]
fn identity_headers_carry_a_verifiable_signature() {
    use hmac::{Hmac, Mac};
    let dir = tempdir();
    let secret = b"an upstream-shared secret of 32+ bytes!!";
    std::fs::write(dir.path().join("sig.key"), secret).unwrap();
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
    let up = start_upstream("app", dir.path(), &[]);
    let main = format!(
        "headers:\n  signature_secret_file: {}\n",
        dir.path().join("sig.key").display()
    );
    let gw = start_gateway(dir.path(), &config(&jwks, up.port, &main));
    wait_ready(&gw);

    let auth = format!("Bearer {}", token(&jwks, &key));
    let resp = raw_get(
        gw.port,
        "/api/x",
        &[("Authorization", &auth), ("X-Auth-Signature", "v1=forged")],
    );
    assert_eq!(resp.status, 200);
    let echo = resp.json();
    let list = echo["header_list"].as_array().unwrap();
    let mut fields: Vec<(String, String)> = list
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .filter(|(n, _)| n.starts_with("x-auth-") && n != "x-auth-signature")
        .collect();
    fields.sort();
    let sigs: Vec<&str> = list
        .iter()
        .filter(|p| p[0] == "x-auth-signature")
        .map(|p| p[1].as_str().unwrap())
        .collect();
    assert_eq!(
        sigs.len(),
        1,
        "exactly one signature, the client's forged one is gone"
    );
    let rid = echo["headers"]["x-request-id"].as_str().unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{rid}\n").as_bytes());
    for (n, v) in &fields {
        mac.update(format!("{n}:{v}\n").as_bytes());
    }
    let want = format!("v1={}", jwt::b64url(mac.finalize().into_bytes()));
    assert_eq!(sigs[0], want);
}

#[test]
fn require_keys_at_start_exits_when_the_issuer_is_unreachable() {
    let dir = tempdir();
    let dead = free_port();
    let body = format!(
        "auth:\n  require_keys_at_start: true\nissuers:\n  - name: gone\n    issuer: http://127.0.0.1:{dead}\n    jwks_url: http://127.0.0.1:{dead}/jwks.json\n    refresh: {{timeout: 1s}}\nroutes:\n  - name: r\n    auth: public\n    return: 200 \"ok\"\n"
    );
    let port = free_port();
    let admin = free_port();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "{}listeners:\n  - address: 127.0.0.1:{port}\nadmin:\n  address: 127.0.0.1:{admin}\n{body}",
            server_block(dir.path())
        ),
    )
    .unwrap();
    let mut gw = Proc::spawn(
        "gateway",
        &bin("portcullis-gateway"),
        &["-c", config.to_str().unwrap()],
        dir.path(),
    );
    let code = gw.wait_exit(Duration::from_secs(20));
    assert!(
        matches!(code, Some(c) if c != 0),
        "expected a failing exit, got {code:?}"
    );
    assert!(
        gw.stderr_text().contains("require_keys_at_start"),
        "{}",
        gw.stderr_text()
    );
}

#[test]
fn access_log_records_outcome_reason_and_subject_but_never_the_token() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
    let up = start_upstream("app", dir.path(), &[]);
    let log = dir.path().join("access.log");
    let main = format!("access_log:\n  format: json\n  path: {}\n", log.display());
    let gw = start_gateway(dir.path(), &config(&jwks, up.port, &main));
    wait_ready(&gw);
    let good = token(&jwks, &key);
    assert_eq!(
        raw_get(
            gw.port,
            "/api/x",
            &[("Authorization", &format!("Bearer {good}"))]
        )
        .status,
        200
    );
    let bad = jwt::corrupt_signature(&good);
    assert_eq!(
        raw_get(
            gw.port,
            "/api/x",
            &[("Authorization", &format!("Bearer {bad}"))]
        )
        .status,
        401
    );
    let mut lines: Vec<serde_json::Value> = Vec::new();
    assert!(wait_for(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        lines.len() >= 2
    }));
    // A request's line is written after its answer, so the next request (on another worker
    // thread) may log first: find each line by its status.
    let line = |status: u16| {
        lines
            .iter()
            .find(|l| l["status"] == status)
            .unwrap_or_else(|| panic!("no {status} line in {lines:?}"))
    };
    assert_eq!(line(200)["auth"], "ok");
    assert_eq!(line(200)["subject"], "user-7");
    assert_eq!(line(401)["auth"], "denied");
    assert_eq!(line(401)["auth_reason"], "bad_signature");
    let text = std::fs::read_to_string(&log).unwrap();
    let signature = good.rsplit('.').next().unwrap();
    assert!(!text.contains(signature), "the token must never be logged");
}
