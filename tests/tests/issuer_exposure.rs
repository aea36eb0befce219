//! What the issuer believes about its clients, and what it shows them (issue 12, items 2
//! and 4), against the real binaries on loopback:
//!
//! - forwarding headers count only from `trusted_proxies`: a forged `X-Forwarded-For` or
//!   `X-Real-IP` from an untrusted peer cannot escape the per-IP password lock-out, and
//!   behind a trusted proxy each client has its own budget;
//! - `/metrics` and the admin API's document are served by the admin listener only, so the
//!   gateway's shipped `/auth/` route (`conf.d/`) cannot expose them;
//! - behind a real gateway with the shipped route and `make run`'s `trusted_proxies`, two
//!   users on different loopback addresses have two budgets.

use std::net::IpAddr;
use std::path::Path;

use portcullis_tests::issuer::*;
use portcullis_tests::{client, free_port, start_gateway, tempdir, Gateway};
use serde_json::{json, Value};

/// Failed password logins a client address may make per window in these tests.
const IP_BUDGET: usize = 3;

/// An issuer on SQLite whose per-IP budget is [`IP_BUDGET`] (accounts do not lock: every
/// attempt uses another login) plus `extra` top-level YAML.
fn issuer(dir: &Path, extra: &str) -> IssuerProc {
    let opts = IssuerOptions::new(DbKind::Sqlite)
        .password(&format!("max_failures_per_ip: {IP_BUDGET}"))
        .password("max_failures_per_account: 1000")
        .extra(extra);
    start_issuer_with(dir, opts)
}

/// A failed password login at `url` for a login nobody has, with these extra headers.
fn failed_login(url: &str, n: usize, headers: &[(&str, &str)]) -> Resp {
    failed_login_with(&client(), url, n, headers)
}

fn failed_login_with(
    http: &reqwest::blocking::Client,
    url: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = http
        .post(url)
        .json(&json!({"email": format!("nobody{n}@example.com"), "password": "not the password"}));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(req)
}

/// Asserts the status of a login attempt (401 wrong password, 429 locked out).
#[track_caller]
fn expect(r: &Resp, status: u16, what: &str) {
    let code = if status == 429 {
        "too_many_requests"
    } else {
        "invalid_grant"
    };
    assert_eq!(r.status, status, "{what}: {}", r.text);
    r.assert_error(status, Some(code));
}

#[test]
fn forged_forwarding_headers_from_an_untrusted_peer_do_not_escape_the_ip_lockout() {
    // The default configuration: no trusted proxies, loopback included.
    let dir = tempdir();
    let iss = issuer(dir.path(), "");
    let url = iss.url("/v1/auth/password");
    for i in 0..IP_BUDGET {
        let forged = format!("198.51.100.{i}");
        let r = failed_login(
            &url,
            i,
            &[("X-Forwarded-For", &forged), ("X-Real-IP", &forged)],
        );
        expect(&r, 401, "within the budget");
    }
    // Every attempt named another address; all of them were the peer's.
    for (n, headers) in [
        [
            ("X-Forwarded-For", "203.0.113.50"),
            ("X-Real-IP", "203.0.113.50"),
        ],
        [
            ("X-Forwarded-For", "203.0.113.51, 127.0.0.1"),
            ("X-Real-IP", "203.0.113.51"),
        ],
        [
            ("X-Forwarded-For", "[2001:db8::52]:443"),
            ("X-Forwarded-For", "203.0.113.52"),
        ],
    ]
    .iter()
    .enumerate()
    {
        let r = failed_login(&url, 100 + n, headers);
        expect(&r, 429, &format!("forged {headers:?}"));
    }
    let r = failed_login(&url, 200, &[]);
    expect(&r, 429, "the peer itself");
}

#[test]
fn behind_a_trusted_proxy_each_client_has_its_own_budget() {
    // The test client plays a proxy on 127.0.0.1 behind another one in 10.0.0.0/8.
    let dir = tempdir();
    let iss = issuer(dir.path(), "trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]\n");
    let url = iss.url("/v1/auth/password");
    // Client A spends its budget; the addresses it writes itself (left of its own) change
    // every time and do not matter: the proxies' entries say who it is.
    for i in 0..IP_BUDGET {
        let chain = format!("6.6.6.{i}, 198.51.100.1, 10.0.0.9");
        let r = failed_login(&url, i, &[("X-Forwarded-For", &chain)]);
        expect(&r, 401, "client A within its budget");
    }
    let r = failed_login(
        &url,
        10,
        &[("X-Forwarded-For", "6.6.6.99, 198.51.100.1, 10.0.0.9")],
    );
    expect(&r, 429, "client A, whatever it writes");
    // The same client seen through a proxy that only sets X-Real-IP.
    let r = failed_login(&url, 11, &[("X-Real-IP", "198.51.100.1")]);
    expect(&r, 429, "client A by X-Real-IP");
    // Client B, behind the same proxies, is not locked out by A.
    let r = failed_login(&url, 12, &[("X-Forwarded-For", "198.51.100.2, 10.0.0.9")]);
    expect(&r, 401, "client B has its own budget");
    // Nor is the proxy's own address (a request without forwarding headers).
    let r = failed_login(&url, 13, &[]);
    expect(&r, 401, "the proxy itself");
    // An IPv6 client counts by its /64: another address of the same /64 each time does not
    // get a fresh budget; another /64 does.
    for i in 0..IP_BUDGET {
        let chain = format!("2001:db8:7:7::{:x}, 10.0.0.9", i + 1);
        let r = failed_login(&url, 20 + i, &[("X-Forwarded-For", &chain)]);
        expect(&r, 401, "IPv6 client within its budget");
    }
    let r = failed_login(
        &url,
        30,
        &[("X-Forwarded-For", "[2001:db8:7:7:ffff::1]:443, 10.0.0.9")],
    );
    expect(&r, 429, "another address of the same /64");
    let r = failed_login(
        &url,
        31,
        &[("X-Forwarded-For", "2001:db8:7:8::1, 10.0.0.9")],
    );
    expect(&r, 401, "another /64");
}

/// The `/admin/...` paths of an OpenAPI document.
fn admin_paths(doc: &Value) -> Vec<String> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .filter(|p| p.starts_with("/admin"))
        .cloned()
        .collect()
}

#[test]
fn metrics_and_the_admin_document_are_on_the_admin_listener_only() {
    let dir = tempdir();
    let iss = issuer(dir.path(), "");
    expect(
        &failed_login(&iss.url("/v1/auth/password"), 0, &[]),
        401,
        "a login to count",
    );

    let public_metrics = get_with(&iss.url("/metrics"), None);
    public_metrics.assert_error(404, Some("not_found"));
    let public_doc = get_with(&iss.url("/openapi.json"), None);
    assert_eq!(public_doc.status, 200);
    let public_doc = public_doc.json();
    assert_eq!(admin_paths(&public_doc), Vec::<String>::new());
    assert!(public_doc["paths"]["/v1/auth/password"].is_object());
    assert!(public_doc["paths"].get("/metrics").is_none());

    // No token needed for these two (Prometheus scrapes them as they are)...
    let metrics = get_with(&iss.admin_url("/metrics"), None);
    assert_eq!(metrics.status, 200, "{}", metrics.text);
    assert!(metrics
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    assert!(
        metrics
            .text
            .contains("portcullis_issuer_logins_total{method=\"pwd\",result=\"denied\"} 1"),
        "{}",
        metrics.text
    );
    let admin_doc = get_with(&iss.admin_url("/openapi.json"), None);
    assert_eq!(admin_doc.status, 200);
    let admin_doc = admin_doc.json();
    assert!(admin_paths(&admin_doc).contains(&"/admin/users/{id}".to_string()));
    assert!(admin_doc["paths"]["/metrics"].is_object());
    // ...while the admin API, and any other path of that listener, still needs it.
    get_with(&iss.admin_url("/admin/users"), None).assert_error(401, Some("invalid_token"));
    get_with(&iss.admin_url("/nothing-here"), None).assert_error(401, Some("invalid_token"));
    let authed = get_with(
        &iss.admin_url("/admin/users"),
        Some(&format!("Bearer {}", iss.admin_token)),
    );
    assert_eq!(authed.status, 200, "{}", authed.text);
}

/// The `trusted_proxies` line of the shipped `config/issuer.yaml` (what `make run` uses).
fn shipped_trusted_proxies() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("config/issuer.yaml")).expect("issuer.yaml");
    let line = text
        .lines()
        .find(|l| l.starts_with("trusted_proxies:"))
        .expect("config/issuer.yaml sets trusted_proxies");
    format!("{line}\n")
}

/// A gateway in front of `iss` with the shipped route files (`conf.d/*.yaml`, `/auth/`
/// included) and, like `config/gateway.yaml`, no trusted proxies of its own.
fn shipped_gateway(dir: &Path, iss: &IssuerProc) -> Gateway {
    let conf_d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf.d/*.yaml");
    let body = format!(
        "trusted_proxies: []\n\
         issuers:\n  - name: portcullis\n    issuer: {iss_url}\n    \
         jwks_url: http://127.0.0.1:{port}/.well-known/jwks.json\n    audiences: [demo]\n\
         upstreams:\n  demo:\n    backends: [\"127.0.0.1:{demo}\"]\n  \
         issuer:\n    backends: [\"127.0.0.1:{port}\"]\n\
         include:\n  - {conf_d}\n",
        iss_url = iss.issuer,
        port = iss.port,
        demo = free_port(),
        conf_d = conf_d.display(),
    );
    start_gateway(dir, &body)
}

/// A client whose connections come from `source` (any 127.x.y.z address is loopback).
fn client_from(source: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .local_address(source.parse::<IpAddr>().expect("address"))
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client")
}

#[test]
fn through_the_shipped_gateway_route() {
    let dir = tempdir();
    let iss = issuer(dir.path(), &shipped_trusted_proxies());
    let gw = shipped_gateway(dir.path(), &iss);

    // Nothing of the admin listener through /auth/.
    let m = get_with(&gw.url("/auth/metrics"), None);
    m.assert_error(404, Some("not_found"));
    let doc = get_with(&gw.url("/auth/openapi.json"), None);
    assert_eq!(doc.status, 200, "{}", doc.text);
    assert_eq!(admin_paths(&doc.json()), Vec::<String>::new());
    get_with(&gw.url("/auth/admin/users"), None).assert_error(404, Some("not_found"));

    // Two users on two loopback addresses: the gateway appends each one's address to
    // X-Forwarded-For (replacing what they forge, as it trusts nobody), and the issuer,
    // which trusts the gateway, counts each against its own budget.
    let url = gw.url("/auth/v1/auth/password");
    let (a, b) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    for i in 0..IP_BUDGET {
        let forged = format!("198.51.100.{i}");
        let r = failed_login_with(
            &a,
            &url,
            i,
            &[("X-Forwarded-For", &forged), ("X-Real-IP", &forged)],
        );
        expect(&r, 401, "user A within its budget");
    }
    let r = failed_login_with(&a, &url, 10, &[("X-Forwarded-For", "198.51.100.77")]);
    expect(&r, 429, "user A, whatever it forges");
    let r = failed_login_with(&b, &url, 11, &[]);
    expect(&r, 401, "user B has its own budget");
    let r = failed_login(&url, 12, &[]);
    expect(&r, 401, "a user on 127.0.0.1 has its own budget");
}
