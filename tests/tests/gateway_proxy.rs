//! Upstream groups end to end: load balancing, failover, health checks, timeouts, error
//! statuses and request body limits.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use portcullis_tests::*;

/// One group `app` with the given backend entries (YAML strings, already quoted) plus extra
/// group settings (`extra` is indented by four spaces), and a public route `/public/` to it.
fn group(backends: &[String], extra: &str) -> String {
    format!(
        "upstreams:\n  app:\n    backends: [{}]\n{extra}routes:\n  - name: public\n    match: {{path: {{prefix: /public/}}}}\n    auth: public\n    upstream: app\n",
        backends.join(", ")
    )
}

fn backend(port: u16) -> String {
    format!("\"127.0.0.1:{port}\"")
}

/// Sends `n` GETs through the gateway and counts which upstream (`server`) answered.
fn spread(gw: &Gateway, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut out = HashMap::new();
    for i in 0..n {
        let resp = c
            .get(gw.url(&format!("/public/lb?i={i}")))
            .send()
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200, "request {i}");
        let echo: Value = resp.json().expect("json");
        *out.entry(echo["server"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

fn admin_json(gw: &Gateway, path: &str) -> Value {
    client()
        .get(gw.admin_url(path))
        .send()
        .expect("admin")
        .json()
        .expect("admin json")
}

/// Value of `portcullis_upstream_backend_up` for one backend, if exported.
fn backend_up(gw: &Gateway, upstream: &str, backend: &str) -> Option<i64> {
    let text = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .expect("metrics")
        .text()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("portcullis_upstream_backend_up{"))
        .find(|l| {
            l.contains(&format!("upstream=\"{upstream}\""))
                && l.contains(&format!("backend=\"{backend}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn round_robin_spreads_requests_and_honours_weights() {
    let dir = tempdir();
    let a = start_upstream("a", dir.path(), &[]);
    let b = start_upstream("b", dir.path(), &[]);

    let gw = start_gateway(dir.path(), &group(&[backend(a.port), backend(b.port)], ""));
    let counts = spread(&gw, 20);
    let (na, nb) = (
        counts.get("a").copied().unwrap_or(0),
        counts.get("b").copied().unwrap_or(0),
    );
    assert_eq!(na + nb, 20, "{counts:?}");
    assert!(
        (8..=12).contains(&na) && (8..=12).contains(&nb),
        "equal weights should split evenly: {counts:?}"
    );
    drop(gw);

    let weighted = format!("\"127.0.0.1:{} weight=3\"", a.port);
    let gw = start_gateway(dir.path(), &group(&[weighted, backend(b.port)], ""));
    let counts = spread(&gw, 40);
    let (na, nb) = (
        counts.get("a").copied().unwrap_or(0),
        counts.get("b").copied().unwrap_or(0),
    );
    assert_eq!(na + nb, 40, "{counts:?}");
    assert!(
        (27..=33).contains(&na) && (7..=13).contains(&nb),
        "weight=3 should give about 3:1: {counts:?}"
    );
}

#[test]
fn connect_failures_fail_over_to_another_backend() {
    let dir = tempdir();
    let live = start_upstream("live", dir.path(), &[]);
    let dead = free_port();
    // Three groups around the same pair (dead one listed first):
    // - `app`: defaults (one retry; max_fails 1 takes the dead backend out passively);
    // - `retry`: max_fails 0, so the dead backend stays in the rotation and every other
    //   request must be retried on the live one;
    // - `noretry`: the same without retries, to show the retry is what saves those requests.
    let pair = format!("[{}, {}]", backend(dead), backend(live.port));
    let body = format!(
        "upstreams:\n  app:\n    backends: {pair}\n  retry:\n    backends: {pair}\n    max_fails: 0\n  noretry:\n    backends: {pair}\n    max_fails: 0\n    retries: 0\nroutes:\n  - name: public\n    match: {{path: {{prefix: /public/}}}}\n    auth: public\n    upstream: app\n  - name: retry\n    match: {{path: {{prefix: /retry/}}}}\n    auth: public\n    upstream: retry\n  - name: noretry\n    match: {{path: {{prefix: /noretry/}}}}\n    auth: public\n    upstream: noretry\n"
    );
    let gw = start_gateway(dir.path(), &body);
    for prefix in ["/public/", "/retry/"] {
        for i in 0..20 {
            let resp = raw_get(gw.port, &format!("{prefix}x?i={i}"), &[]);
            assert_eq!(
                resp.status,
                200,
                "{prefix} request {i}: {}",
                String::from_utf8_lossy(&resp.body)
            );
            assert_eq!(resp.json()["server"], "live");
        }
    }
    let statuses: Vec<u16> = (0..20)
        .map(|i| raw_get(gw.port, &format!("/noretry/x?i={i}"), &[]).status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        10,
        "retries: 0 → the dead half fails: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        10,
        "{statuses:?}"
    );
}

#[test]
fn health_check_takes_a_backend_out_and_brings_it_back() {
    let dir = tempdir();
    let flag = dir.path().join("b-unhealthy");
    let flag_arg = flag.display().to_string();
    let a = start_upstream("a", dir.path(), &[]);
    let b = start_upstream("b", dir.path(), &["--unhealthy-file", &flag_arg]);
    let hc = "    health_check: {type: http, path: /healthz, interval: 200ms, timeout: 500ms}\n";
    let gw = start_gateway(dir.path(), &group(&[backend(a.port), backend(b.port)], hc));
    let b_label = format!("127.0.0.1:{}", b.port);
    let healthy = |gw: &Gateway| admin_json(gw, "/readyz")["upstreams"]["app"]["healthy"].as_i64();

    // Both serve at first, and the checker reports both up.
    assert!(wait_for(Duration::from_secs(5), || backend_up(
        &gw, "app", &b_label
    ) == Some(1)));
    let counts = spread(&gw, 10);
    assert!(
        counts.contains_key("a") && counts.contains_key("b"),
        "{counts:?}"
    );
    assert_eq!(healthy(&gw), Some(2));

    // b's /healthz turns 503: it is taken out within a few intervals.
    std::fs::write(&flag, "").unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || healthy(&gw) == Some(1)),
        "readyz: {}",
        admin_json(&gw, "/readyz")
    );
    let ready = admin_json(&gw, "/readyz");
    assert_eq!(ready["upstreams"]["app"]["backends"], 2);
    assert_eq!(backend_up(&gw, "app", &b_label), Some(0));
    assert_eq!(
        backend_up(&gw, "app", &format!("127.0.0.1:{}", a.port)),
        Some(1)
    );
    let counts = spread(&gw, 20);
    assert_eq!(
        counts.get("a"),
        Some(&20),
        "only a serves while b is unhealthy: {counts:?}"
    );

    // Healthy again: b gets traffic again.
    std::fs::remove_file(&flag).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || healthy(&gw) == Some(2)),
        "b never came back"
    );
    assert_eq!(backend_up(&gw, "app", &b_label), Some(1));
    let counts = spread(&gw, 10);
    assert!(
        counts.get("b").is_some_and(|&n| n >= 4),
        "b serves again: {counts:?}"
    );
}

#[test]
fn read_timeout_answers_504_quickly() {
    let dir = tempdir();
    let up = start_upstream("slow", dir.path(), &[]);
    let gw = start_gateway(
        dir.path(),
        &group(&[backend(up.port)], "    timeouts: {read: 300ms}\n"),
    );

    // Within the timeout: fine.
    let resp = raw_get(gw.port, "/public/quick", &[("X-Demo-Delay-Ms", "50")]);
    assert_eq!(resp.status, 200);

    let start = Instant::now();
    let resp = raw_get(gw.port, "/public/slow", &[("X-Demo-Delay-Ms", "2000")]);
    let took = start.elapsed();
    assert_eq!(resp.status, 504, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.json()["error"], "gateway_timeout");
    assert!(
        took >= Duration::from_millis(250),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "504 took {took:?}, the read timeout is 300ms"
    );
}

#[test]
fn unreachable_backend_is_502_and_no_healthy_backend_is_503() {
    let dir = tempdir();
    let flag = dir.path().join("sick");
    std::fs::write(&flag, "").unwrap();
    let flag_arg = flag.display().to_string();
    let sick = start_upstream("sick", dir.path(), &["--unhealthy-file", &flag_arg]);
    let dead = free_port();
    let body = format!(
        "upstreams:\n  dead:\n    backends: [{}]\n  sick:\n    backends: [{}]\n    health_check: {{type: http, path: /healthz, interval: 200ms, timeout: 500ms}}\nroutes:\n  - name: dead\n    match: {{path: {{prefix: /dead/}}}}\n    auth: public\n    upstream: dead\n  - name: sick\n    match: {{path: {{prefix: /sick/}}}}\n    auth: public\n    upstream: sick\n",
        backend(dead),
        backend(sick.port)
    );
    let gw = start_gateway(dir.path(), &body);

    for _ in 0..2 {
        let resp = raw_get(gw.port, "/dead/x", &[]);
        assert_eq!(resp.status, 502, "{}", String::from_utf8_lossy(&resp.body));
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.json()["error"], "bad_gateway");
    }

    // The only backend of `sick` fails its health check: no backend may take the request.
    assert!(
        wait_for(Duration::from_secs(5), || admin_json(&gw, "/readyz")
            ["upstreams"]["sick"]["healthy"]
            == 0),
        "sick backend never marked down"
    );
    let resp = raw_get(gw.port, "/sick/x", &[]);
    assert_eq!(resp.status, 503, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let err = resp.json();
    assert_eq!(err["error"], "service_unavailable");
    // The description is generic: upstream names and addresses are internal.
    let description = err["error_description"].as_str().unwrap();
    assert!(description.contains("no healthy backend"), "{err}");
    assert!(
        !description.contains("sick") && !description.contains("127.0.0.1"),
        "{err}"
    );
    // The backend itself is up and would answer: the 503 comes from the health state.
    assert!(port_open(sick.port));
}

/// Sends `request` on a fresh connection and reads until the peer closes or 5 s pass.
fn raw_exchange(port: u16, request: &[u8]) -> (Option<u16>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The gateway may answer and close before it has read everything; that is fine.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    (status, text)
}

/// The body of a raw response as JSON.
fn body_json(text: &str) -> Value {
    let (_, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body: {text}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn limited_route(upstream: u16) -> String {
    format!(
        "upstreams:\n  app:\n    backends: [{}]\nroutes:\n  - name: limited\n    match: {{path: {{prefix: /public/}}}}\n    auth: public\n    upstream: app\n    max_body_size: 1k\n",
        backend(upstream)
    )
}

/// A chunked POST to `/public/chunked` with one chunk of each given size.
fn chunked_post(port: u16, chunks: &[usize]) -> String {
    let mut req = format!(
        "POST /public/chunked HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for &n in chunks {
        req.push_str(&format!("{n:x}\r\n{}\r\n", "y".repeat(n)));
    }
    req.push_str("0\r\n\r\n");
    req
}

#[test]
fn max_body_size_is_enforced_for_declared_and_chunked_bodies() {
    let dir = tempdir();
    let up = start_upstream("app", dir.path(), &[]);
    let gw = start_gateway(dir.path(), &limited_route(up.port));
    let c = client();

    // Declared too large: refused by the gateway itself, nothing forwarded.
    let resp = c
        .post(gw.url("/public/upload"))
        .body(vec![b'x'; 2000])
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 413);
    assert!(
        resp.headers().get("x-demo-server").is_none(),
        "the upstream must not answer"
    );
    let err: Value = resp.json().unwrap();
    assert_eq!(err["error"], "payload_too_large");
    assert_eq!(
        err["error_description"],
        "request body larger than 1024 bytes"
    );

    // Under the limit, and exactly at it: forwarded whole.
    for n in [500usize, 1024] {
        let resp = c
            .post(gw.url("/public/upload"))
            .body(vec![b'x'; n])
            .send()
            .expect("post");
        assert_eq!(resp.status().as_u16(), 200, "{n} bytes");
        assert_eq!(resp.json::<Value>().unwrap()["body_bytes"], n);
    }

    // Chunked under the limit passes.
    let (status, text) = raw_exchange(gw.port, chunked_post(gw.port, &[300, 300]).as_bytes());
    assert_eq!(status, Some(200), "{text}");
    assert_eq!(body_json(&text)["body_bytes"], 600);

    // Chunked over the limit: no Content-Length to check up front, so the gateway has already
    // connected and sent the request head when the running count passes 1024 bytes. It then
    // answers 413 itself, closes the connection, and abandons the upstream request midway:
    // the upstream sees a truncated body and never answers.
    let (status, text) = raw_exchange(
        gw.port,
        chunked_post(gw.port, &[500, 500, 500, 500]).as_bytes(),
    );
    assert_eq!(status, Some(413), "{text}");
    assert!(
        text.contains("\r\nConnection: close\r\n") || text.contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    let err = body_json(&text);
    assert_eq!(err["error"], "payload_too_large");
    assert!(
        !text.contains("x-demo-server"),
        "the upstream must not have answered: {text}"
    );
    assert!(
        wait_for(Duration::from_secs(5), || up
            .proc
            .stderr_text()
            .contains("reading request body")),
        "the upstream should have seen an aborted body:\n{}",
        up.proc.stderr_text()
    );
}

/// The 413 for a streamed (chunked) body explains the limit like the declared-size 413
/// does, and does not tell the client the backend's address. Today `fail_to_proxy` uses the
/// outer error context, which Pingora sets to the peer (`Peer: addr: 127.0.0.1:PORT, …`).
#[test]
fn streamed_413_does_not_reveal_the_backend_address() {
    let dir = tempdir();
    let up = start_upstream("app", dir.path(), &[]);
    let gw = start_gateway(dir.path(), &limited_route(up.port));
    let (status, text) = raw_exchange(
        gw.port,
        chunked_post(gw.port, &[500, 500, 500, 500]).as_bytes(),
    );
    assert_eq!(status, Some(413), "{text}");
    let description = body_json(&text)["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !description.contains(&up.port.to_string()),
        "the error description names the backend: {description:?}"
    );
    assert_eq!(description, "request body larger than 1024 bytes");
}
