//! Routing end to end: 404/405/401 answers, route precedence, path normalisation through
//! the real server, and the path rewrites and fixed responses a route can carry.

use std::net::TcpStream;
use std::time::Duration;

use portcullis_tests::*;

/// Sends `method target` with exactly one `Host: host` header over a fresh connection.
fn request(port: u16, method: &str, target: &str, host: &str) -> RawResponse {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    raw_request(&mut s, &req)
}

/// Body of a response as text.
fn text(resp: &RawResponse) -> String {
    String::from_utf8_lossy(&resp.body).into_owned()
}

/// A fixed-response route; the body names the route so a test can see which one won.
fn fixed(name: &str, matcher: &str) -> String {
    format!(
        "  - name: {name}\n    match: {matcher}\n    auth: public\n    return: 200 \"{name}\"\n"
    )
}

/// GET through the gateway with a chosen Host; returns the winning route's name (the body)
/// or the status code when the answer was not a 200.
fn winner(port: u16, method: &str, target: &str, host: &str) -> String {
    let resp = request(port, method, target, host);
    if resp.status == 200 {
        text(&resp)
    } else {
        format!("status {}", resp.status)
    }
}

#[test]
fn unmatched_is_404_json_and_wrong_method_is_405_with_allow() {
    let dir = tempdir();
    let mut body = String::from("routes:\n");
    body.push_str(&fixed(
        "read-only",
        "{path: {prefix: /ro/}, methods: [GET, HEAD]}",
    ));
    body.push_str(&fixed("other", "{path: {exact: /other}}"));
    let gw = start_gateway(dir.path(), &body);

    // Nothing matches: 404 with the JSON error shape.
    let resp = raw_get(gw.port, "/nothing/here", &[]);
    assert_eq!(resp.status, 404, "{}", text(&resp));
    assert!(resp
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    let json = resp.json();
    assert_eq!(json["error"], "not_found");
    assert!(json["error_description"].is_string(), "{json}");
    // A near miss of an exact route is not a match either.
    assert_eq!(raw_get(gw.port, "/other/x", &[]).status, 404);

    // The path matches but the method does not: 405 listing what is allowed.
    let resp = request(gw.port, "DELETE", "/ro/x", "127.0.0.1");
    assert_eq!(resp.status, 405, "{}", text(&resp));
    let allow = resp.header("allow").expect("405 carries Allow");
    let mut allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
    allowed.sort_unstable();
    assert_eq!(allowed, ["GET", "HEAD"], "Allow: {allow}");
    assert_eq!(resp.json()["error"], "method_not_allowed");

    // The allowed method goes through.
    let resp = request(gw.port, "GET", "/ro/x", "127.0.0.1");
    assert_eq!((resp.status, text(&resp).as_str()), (200, "read-only"));
}

#[test]
fn route_without_auth_is_401_with_bearer_challenge() {
    let dir = tempdir();
    let up = start_upstream("app", dir.path(), &[]);
    let body = format!(
        "upstreams:\n  app:\n    backends: [\"127.0.0.1:{}\"]\nroutes:\n  - name: private\n    match: {{path: {{prefix: /private/}}}}\n    upstream: app\n  - name: open\n    match: {{path: {{prefix: /open/}}}}\n    auth: public\n    upstream: app\n",
        up.port
    );
    let gw = start_gateway(dir.path(), &body);

    let resp = raw_get(gw.port, "/private/x", &[]);
    assert_eq!(resp.status, 401, "{}", text(&resp));
    assert_eq!(
        resp.header("www-authenticate"),
        Some(r#"Bearer realm="portcullis""#)
    );
    assert_eq!(resp.json()["error"], "unauthorized");
    assert!(
        resp.header("x-demo-server").is_none(),
        "the upstream must not answer"
    );

    // A token that nobody can verify is refused too, with the RFC 6750 error.
    let resp = raw_get(
        gw.port,
        "/private/x",
        &[("Authorization", "Bearer abc.def.ghi")],
    );
    assert_eq!(resp.status, 401);
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(r#"Bearer realm="portcullis""#),
        "{challenge}"
    );
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );

    // The same upstream behind a public route answers (the 401 came from the gateway).
    let resp = raw_get(gw.port, "/open/x", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["server"], "app");
}

#[test]
fn exact_beats_regex_beats_longest_prefix_and_methods_beat_none() {
    let dir = tempdir();
    // Listed in the reverse of their precedence, so config order cannot explain the result.
    let mut body = String::from("routes:\n");
    body.push_str(&fixed("root", "{path: {prefix: /}}"));
    body.push_str(&fixed("p-short", "{path: {prefix: /p/}}"));
    body.push_str(&fixed("p-long", "{path: {prefix: /p/long/}}"));
    body.push_str(&fixed("p-regex", "{path: {regex: '^/p/.*\\.json$'}}"));
    body.push_str(&fixed("p-exact", "{path: {exact: /p/long/exact.json}}"));
    body.push_str(&fixed("m-any", "{path: {prefix: /m/}}"));
    body.push_str(&fixed("m-post", "{path: {prefix: /m/}, methods: [POST]}"));
    body.push_str(&fixed("ro", "{path: {prefix: /ro}}"));
    let gw = start_gateway(dir.path(), &body);
    let w = |method: &str, target: &str| winner(gw.port, method, target, "127.0.0.1");

    assert_eq!(
        w("GET", "/p/long/exact.json"),
        "p-exact",
        "exact beats regex and prefix"
    );
    assert_eq!(
        w("GET", "/p/long/other.json"),
        "p-regex",
        "regex beats the longest prefix"
    );
    assert_eq!(w("GET", "/p/a.json"), "p-regex");
    assert_eq!(w("GET", "/p/long/x"), "p-long", "longest prefix wins");
    assert_eq!(w("GET", "/p/x"), "p-short");
    assert_eq!(w("GET", "/q"), "root");

    assert_eq!(
        w("POST", "/m/x"),
        "m-post",
        "a route listing the method beats one listing none"
    );
    assert_eq!(w("GET", "/m/x"), "m-any");

    // A prefix without a trailing slash matches only at a segment boundary.
    assert_eq!(w("GET", "/ro"), "ro");
    assert_eq!(w("GET", "/ro/x"), "ro");
    assert_eq!(w("GET", "/rox"), "root", "prefix /ro must not match /rox");
}

#[test]
fn exact_host_beats_wildcard_host_beats_no_host() {
    let dir = tempdir();
    let mut body = String::from("routes:\n");
    body.push_str(&fixed("h-any", "{path: {prefix: /h/}}"));
    body.push_str(&fixed(
        "h-wild",
        "{host: '*.example.com', path: {prefix: /h/}}",
    ));
    body.push_str(&fixed(
        "h-exact",
        "{host: api.example.com, path: {prefix: /h/}}",
    ));
    body.push_str(&fixed("z-any", "{path: {prefix: /z/}}"));
    let gw = start_gateway(dir.path(), &body);
    let w = |host: &str, target: &str| winner(gw.port, "GET", target, host);

    assert_eq!(w("api.example.com", "/h/x"), "h-exact");
    assert_eq!(
        w("api.example.com:8080", "/h/x"),
        "h-exact",
        "the port is not part of the host"
    );
    assert_eq!(
        w("API.Example.COM", "/h/x"),
        "h-exact",
        "hosts compare case-insensitively"
    );
    assert_eq!(w("other.example.com", "/h/x"), "h-wild");
    assert_eq!(w("a.b.example.com", "/h/x"), "h-wild");
    assert_eq!(
        w("example.com", "/h/x"),
        "h-any",
        "*.example.com does not match the bare domain"
    );
    assert_eq!(w("notexample.com", "/h/x"), "h-any");
    assert_eq!(w("127.0.0.1", "/h/x"), "h-any");
    // When the host's own routes have no match, routes without a host still apply.
    assert_eq!(w("api.example.com", "/z/x"), "z-any");
    assert_eq!(w("other.example.com", "/z/x"), "z-any");
}

fn normalisation_gateway(dir: &std::path::Path) -> (Upstream, Gateway) {
    let up = start_upstream("public-up", dir, &[]);
    let body = format!(
        "upstreams:\n  app:\n    backends: [\"127.0.0.1:{}\"]\nroutes:\n  - name: public\n    match: {{path: {{prefix: /public/}}}}\n    auth: public\n    upstream: app\n  - name: admin\n    match: {{path: {{prefix: /admin}}}}\n    upstream: app\n",
        up.port
    );
    let gw = start_gateway(dir, &body);
    (up, gw)
}

#[test]
fn dot_segments_are_resolved_before_routing() {
    let dir = tempdir();
    let (_up, gw) = normalisation_gateway(dir.path());
    for target in [
        "/public/../admin",
        "/public/%2e%2e/admin/x",
        "/public/%2E./admin/x",
        "/public/./../admin/",
    ] {
        let resp = raw_get(gw.port, target, &[]);
        assert_eq!(
            resp.status,
            401,
            "{target} must be routed as an /admin path: {}",
            text(&resp)
        );
        assert_eq!(
            resp.header("www-authenticate"),
            Some(r#"Bearer realm="portcullis""#),
            "{target}"
        );
        assert!(
            resp.header("x-demo-server").is_none(),
            "{target} reached the public upstream"
        );
    }
}

#[test]
fn ambiguous_paths_are_refused_with_400() {
    let dir = tempdir();
    let (_up, gw) = normalisation_gateway(dir.path());
    for target in [
        "/public/..%2Fadmin",
        "/public/..%2fadmin",
        "/public%5C..%5Cadmin",
        "/public/%00",
        "/public/%252e%252e/admin",
        "/public/%252e",
        "/public/..;/admin",
        "/public/.;x/admin",
        "/../etc",
        "/public/../../etc",
        "/%2e%2e/etc/passwd",
        "/public/%zz",
    ] {
        let resp = raw_get(gw.port, target, &[]);
        assert_eq!(resp.status, 400, "{target}: {}", text(&resp));
        assert_eq!(resp.json()["error"], "bad_request", "{target}");
        assert!(
            resp.header("x-demo-server").is_none(),
            "{target} reached the upstream"
        );
    }
}

#[test]
fn upstream_sees_the_normalised_path_and_the_query() {
    let dir = tempdir();
    let (_up, gw) = normalisation_gateway(dir.path());
    let cases = [
        ("/public//a/./b", "/public/a/b", None),
        ("/public/a/../b/", "/public/b/", None),
        ("/%70ublic/%7euser", "/public/~user", None),
        ("/public/a%20b", "/public/a%20b", None),
        (
            "/public//a/./b?x=1&y=%2F&z=../..",
            "/public/a/b",
            Some("x=1&y=%2F&z=../.."),
        ),
        ("/public/q?", "/public/q", Some("")),
    ];
    for (target, path, query) in cases {
        let resp = raw_get(gw.port, target, &[]);
        assert_eq!(resp.status, 200, "{target}: {}", text(&resp));
        let echo = resp.json();
        assert_eq!(echo["server"], "public-up");
        assert_eq!(echo["path"], path, "path forwarded for {target}");
        match query {
            Some(q) => assert_eq!(echo["query"], q, "query forwarded for {target}"),
            None => assert!(
                echo["query"].is_null(),
                "{target}: unexpected query {}",
                echo["query"]
            ),
        }
    }
}

#[test]
fn strip_prefix_rewrite_and_fixed_responses() {
    let dir = tempdir();
    let up = start_upstream("app", dir.path(), &[]);
    let body = format!(
        "upstreams:
  app:
    backends: [\"127.0.0.1:{}\"]
routes:
  - name: svc
    match: {{path: {{prefix: /svc/}}}}
    auth: public
    upstream: app
    strip_prefix: /svc
  - name: old
    match: {{path: {{prefix: /old/}}}}
    auth: public
    upstream: app
    rewrite: {{regex: \"^/old/(.*)$\", replacement: \"/new/$1\"}}
  - name: fixed
    match: {{path: {{exact: /fixed}}}}
    auth: public
    return: 200 \"ok\"
  - name: moved
    match: {{path: {{exact: /moved}}}}
    auth: public
    return: 301 https://example.com/
",
        up.port
    );
    let gw = start_gateway(dir.path(), &body);

    let echo = raw_get(gw.port, "/svc/a/b?q=1", &[]).json();
    assert_eq!(echo["path"], "/a/b");
    assert_eq!(echo["query"], "q=1");
    // The prefix is stripped from the normalised path, not the raw one.
    let echo = raw_get(gw.port, "/svc//x/../y", &[]).json();
    assert_eq!(echo["path"], "/y");

    let echo = raw_get(gw.port, "/old/x/y?k=v", &[]).json();
    assert_eq!(echo["path"], "/new/x/y");
    assert_eq!(echo["query"], "k=v");

    let resp = raw_get(gw.port, "/fixed", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(text(&resp), "ok");
    assert!(resp
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/plain"));
    assert!(
        resp.header("x-demo-server").is_none(),
        "a fixed response never reaches the upstream"
    );

    let resp = raw_get(gw.port, "/moved", &[]);
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("https://example.com/"));
    assert!(resp.header("x-demo-server").is_none());
}
