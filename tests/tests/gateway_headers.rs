//! Identity-header stripping and nginx-style forwarding headers, end to end.

use portcullis_tests::*;

fn routes(upstream: u16) -> String {
    format!(
        "upstreams:\n  app:\n    backends: [\"127.0.0.1:{upstream}\"]\nroutes:\n  - name: public\n    match: {{path: {{prefix: /public/}}}}\n    auth: public\n    upstream: app\n"
    )
}

#[test]
fn forged_identity_headers_never_reach_the_upstream() {
    let dir = tempdir();
    let up = start_upstream("app", dir.path(), &[]);
    let gw = start_gateway(dir.path(), &routes(up.port));
    let forged = [
        ("X-Auth-Subject", "admin"),
        ("x-auth-roles", "admin"),
        ("X-AUTH-SCOPES", "root"),
        ("X_Auth_Subject", "admin"),
        ("x_auth_claims", "e30"),
        ("X-Auth_Method", "pwd"),
    ];
    let resp = raw_get(gw.port, "/public/hello", &forged);
    assert_eq!(resp.status, 200);
    let echo = resp.json();
    for (name, _) in echo["header_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), ()))
    {
        let canon = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            !canon.starts_with("x-auth-"),
            "forged header {name} reached the upstream"
        );
    }
    // A header that merely starts with similar letters is not ours and passes.
    let resp = raw_get(gw.port, "/public/hello", &[("X-Author", "kept")]);
    assert_eq!(resp.json()["headers"]["x-author"], "kept");
}

#[test]
fn forwarding_headers_without_a_trusted_proxy_are_replaced() {
    let dir = tempdir();
    let up = start_upstream("app", dir.path(), &[]);
    let gw = start_gateway(dir.path(), &routes(up.port));
    let resp = raw_get(
        gw.port,
        "/public/x",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Request-Id", "client-chosen"),
        ],
    );
    assert_eq!(resp.status, 200);
    let h = &resp.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", gw.port));
    let rid = h["x-request-id"].as_str().unwrap();
    assert_ne!(
        rid, "client-chosen",
        "an untrusted peer must not choose the request id"
    );
    assert_eq!(rid.len(), 32);
    assert_eq!(
        resp.header("x-request-id"),
        Some(rid),
        "the request id is echoed to the client"
    );
}

#[test]
fn forwarding_headers_from_a_trusted_proxy_are_extended() {
    let dir = tempdir();
    let up = start_upstream("app", dir.path(), &[]);
    let body = format!("trusted_proxies: [127.0.0.1/32]\n{}", routes(up.port));
    let gw = start_gateway(dir.path(), &body);
    let resp = raw_get(
        gw.port,
        "/public/x",
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "app.example.com"),
            ("X-Request-Id", "edge-123"),
        ],
    );
    let h = &resp.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "203.0.113.7");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "app.example.com");
    assert_eq!(h["x-request-id"], "edge-123");
    assert_eq!(resp.header("x-request-id"), Some("edge-123"));
}

#[test]
fn host_header_is_preserved_by_default_and_configurable() {
    let dir = tempdir();
    let up = start_upstream("app", dir.path(), &[]);
    let body = format!(
        "{}  - name: fixed-host\n    match: {{path: {{prefix: /fixed/}}}}\n    auth: public\n    upstream: app\n    host_header: internal.svc\n    request_headers:\n      set: {{X-Env: test}}\n      remove: [X-Drop]\n    response_headers:\n      add: {{X-Served-By: portcullis}}\n",
        routes(up.port)
    );
    let gw = start_gateway(dir.path(), &body);
    let resp = raw_get(gw.port, "/public/x", &[]);
    assert_eq!(
        resp.json()["headers"]["host"],
        format!("127.0.0.1:{}", gw.port)
    );
    let resp = raw_get(gw.port, "/fixed/x", &[("X-Drop", "1")]);
    let echo = resp.json();
    assert_eq!(echo["headers"]["host"], "internal.svc");
    assert_eq!(echo["headers"]["x-env"], "test");
    assert!(echo["headers"].get("x-drop").is_none());
    assert_eq!(resp.header("x-served-by"), Some("portcullis"));
}
