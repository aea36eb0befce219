//! The edge's resource limits, end to end over raw sockets: request head sizes, the memory
//! held by unfinished heads, header/body/keep-alive timeouts, requests per connection,
//! connections per process, body sizes, and invalid UTF-8 in paths.
//!
//! The limits live under `server.limits` in gateway.yaml; the defaults are
//!
//! ```yaml
//! server:
//!   limits:
//!     max_uri_length: 8k          # longer request target → 414, connection closed
//!     max_header_line: 8k         # one longer header line → 431, connection closed
//!     max_head_size: 32k          # request line + all headers → 431, connection closed
//!     max_headers: 100            # more header fields → 431, connection closed
//!     max_body_size: 1m           # routes without their own; "0" = unlimited; over → 413
//!     client_header_timeout: 60s  # total time to receive a request head → 408 + close
//!     client_body_timeout: 60s    # between two body reads → 408
//!     keepalive_timeout: 75s      # idle keep-alive connection closed (no response)
//!     keepalive_requests: 1000    # then `Connection: close`
//!     max_connections: 10000      # per process; more are closed at once, counted in
//!                                 # portcullis_connections_refused_total
//!     rate_limit_keys: 100000
//! ```
//!
//! Tests of the defaults write no `limits:` section at all. Every wait is bounded: sockets
//! have read and write timeouts and every loop has a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_tests::recording_upstream::{
    describe, exchange, parse_responses, read_until_close, Exchange, RecordingUpstream, Resp,
};
use portcullis_tests::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct Env {
    up: RecordingUpstream,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

/// One route proxying `/{name}/` to the recording upstream without auth, plus `extra` lines
/// (e.g. `max_body_size: 10m`).
fn route(name: &str, extra: &str) -> String {
    let mut s = format!(
        "  - name: {name}\n    match: {{path: {{prefix: /{name}/}}}}\n    auth: public\n    upstream: app\n"
    );
    for line in extra.lines() {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// Starts a recording upstream and a gateway with `limits` (YAML lines for `server.limits`;
/// empty: no `limits:` section, the defaults) and `routes` (from [`route`]).
fn start(limits: &str, routes: &[String]) -> Env {
    let dir = tempdir();
    let up = RecordingUpstream::start();
    let gw = start_limited(dir.path(), limits, up.port, &routes.concat());
    Env { up, gw, _dir: dir }
}

fn start_limited(dir: &Path, limits: &str, upstream: u16, routes: &str) -> Gateway {
    let mut server = String::new();
    if !limits.trim().is_empty() {
        server.push_str("  limits:\n");
        for line in limits.lines() {
            server.push_str("    ");
            server.push_str(line.trim());
            server.push('\n');
        }
    }
    let gw = start_gateway_server(
        dir,
        &server,
        &format!("upstreams:\n  app:\n    backends: [\"127.0.0.1:{upstream}\"]\nroutes:\n{routes}"),
    );
    // Let the gateway notice that the readiness probes went away again.
    std::thread::sleep(Duration::from_millis(200));
    gw
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s
}

/// A keep-alive GET with `headers` (complete lines, CRLF-terminated).
fn get(target: &str, headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: a\r\n{headers}\r\n").into_bytes()
}

/// `n` header lines `X-Pad-i: ppp…` of exactly `len` bytes each (without the CRLF).
fn pad_headers(n: usize, len: usize) -> String {
    (0..n)
        .map(|i| {
            let name = format!("X-Pad-{i}: ");
            format!("{name}{}\r\n", "p".repeat(len - name.len()))
        })
        .collect()
}

/// Reads one complete response within `timeout`; `Err` says what came instead.
fn read_one(s: &mut TcpStream, timeout: Duration) -> Result<Resp, String> {
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(r) = parse_responses(&raw, false).into_iter().next() {
            return Ok(r);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no complete response within {timeout:?}; got {:?}",
                String::from_utf8_lossy(&raw)
            ));
        }
        s.set_read_timeout(Some(left)).ok();
        match s.read(&mut chunk) {
            Ok(0) => {
                return parse_responses(&raw, true)
                    .into_iter()
                    .next()
                    .ok_or_else(|| {
                        format!("connection closed; got {:?}", String::from_utf8_lossy(&raw))
                    })
            }
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                return Err(format!(
                    "read failed ({e}); got {:?}",
                    String::from_utf8_lossy(&raw)
                ))
            }
        }
    }
}

/// Writes `request` on `s` and reads one response.
fn roundtrip(s: &mut TcpStream, request: &[u8], timeout: Duration) -> Result<Resp, String> {
    s.write_all(request)
        .map_err(|e| format!("write failed: {e}"))?;
    read_one(s, timeout)
}

/// Sends `head` then `body` from a thread of its own (so a large body and the response can
/// cross) and reads one response within 30 s.
fn send_with_body(port: u16, head: String, body: Vec<u8>) -> Result<Resp, String> {
    let mut s = connect(port);
    let mut w = s.try_clone().expect("clone the socket");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        for part in body.chunks(64 * KIB) {
            if w.write_all(part).is_err() {
                break;
            }
        }
    });
    let r = read_one(&mut s, Duration::from_secs(30));
    drop(s);
    let _ = writer.join();
    r
}

fn post_head(target: &str, len: usize) -> String {
    format!("POST {target} HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n")
}

fn text(r: &Result<Resp, String>) -> String {
    match r {
        Ok(r) => format!(
            "{} {:?} {}",
            r.status,
            r.headers,
            String::from_utf8_lossy(&r.body)
        ),
        Err(e) => e.clone(),
    }
}

fn status(r: &Result<Resp, String>) -> Option<u16> {
    r.as_ref().ok().map(|r| r.status)
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

// ---------------------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------------------

/// Refused heads: exactly one `status`, the connection closed after it, nothing upstream.
fn expect_refused_head(f: &mut Failures, env: &Env, case: &str, bytes: &[u8], status: u16) {
    env.up.clear();
    let ex = exchange(env.gw.port, bytes, 1);
    std::thread::sleep(Duration::from_millis(100));
    let recs = env.up.requests();
    f.check(
        ex.statuses() == [status],
        case,
        format!(
            "expected exactly one {status}, got {:?}:\n{}",
            ex.statuses(),
            ex.text()
        ),
    );
    f.check(
        ex.closed,
        case,
        format!("the connection stayed open after the {status}"),
    );
    f.check(
        recs.is_empty(),
        case,
        format!(
            "the refused request reached the upstream:\n{}",
            describe(&recs)
        ),
    );
}

/// Accepted heads: one 200, forwarded once.
fn expect_accepted_head(f: &mut Failures, env: &Env, case: &str, bytes: &[u8]) -> bool {
    env.up.clear();
    let ex = exchange(env.gw.port, bytes, 1);
    let recs = env.up.requests();
    let ok = ex.statuses() == [200] && recs.len() == 1 && recs[0].complete;
    f.check(
        ok,
        case,
        format!(
            "expected one 200 forwarded once, got {:?}:\n{}\nupstream:\n{}",
            ex.statuses(),
            ex.text(),
            describe(&recs)
        ),
    );
    ok
}

/// Default limits: a 9 KiB target → 414, a 9 KiB header line, 120 fields, or a 40 KiB head
/// of 5 KiB lines → 431; each closes the connection and forwards nothing. Heads just under
/// every limit pass unchanged.
#[test]
fn oversized_heads_are_refused_with_the_default_limits() {
    let env = start("", &[route("public", "")]);
    let mut f = Failures::default();
    let refused = [
        (
            "9 KiB request target",
            get(&format!("/public/{}", "u".repeat(9 * KIB)), ""),
            414,
        ),
        (
            "one 9 KiB header line",
            get("/public/line", &pad_headers(1, 9 * KIB)),
            431,
        ),
        (
            "120 header fields",
            get("/public/fields", &pad_headers(120, 20)),
            431,
        ),
        (
            "40 KiB head in 5 KiB lines",
            get("/public/head", &pad_headers(8, 5 * KIB)),
            431,
        ),
    ];
    for (case, bytes, status) in &refused {
        expect_refused_head(&mut f, &env, case, bytes, *status);
    }

    // Just under each limit.
    let target = format!("/public/{}", "u".repeat(8000 - "/public/".len()));
    if expect_accepted_head(&mut f, &env, "8000-byte target", &get(&target, "")) {
        let recs = env.up.requests();
        f.check(
            recs[0].target == target,
            "8000-byte target",
            "the target was not forwarded unchanged".into(),
        );
    }
    let line = pad_headers(1, 8000);
    if expect_accepted_head(
        &mut f,
        &env,
        "8000-byte header line",
        &get("/public/l", &line),
    ) {
        let recs = env.up.requests();
        f.check(
            recs[0].header("x-pad-0").map(str::len) == Some(8000 - "X-Pad-0: ".len()),
            "8000-byte header line",
            "the header was not forwarded whole".into(),
        );
    }
    // Host + 94 = 95 fields.
    if expect_accepted_head(
        &mut f,
        &env,
        "95 header fields",
        &get("/public/f", &pad_headers(94, 20)),
    ) {
        let recs = env.up.requests();
        let pads = recs[0]
            .headers
            .iter()
            .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-pad-"))
            .count();
        f.check(
            pads == 94,
            "95 header fields",
            format!("{pads} of 94 headers forwarded"),
        );
    }
    expect_accepted_head(
        &mut f,
        &env,
        "30 KiB head in 5 KiB lines",
        &get("/public/h", &pad_headers(6, 5 * KIB)),
    );
    f.assert_none();
}

/// The same limits, configured small, apply at their configured sizes.
#[test]
fn head_limits_are_configurable() {
    let env = start(
        "max_uri_length: 1k\nmax_header_line: 1k\nmax_headers: 10\nmax_head_size: 4k",
        &[route("public", "")],
    );
    let mut f = Failures::default();
    let refused = [
        (
            "2 KiB target",
            get(&format!("/public/{}", "u".repeat(2 * KIB)), ""),
            414,
        ),
        (
            "one 2 KiB header line",
            get("/public/line", &pad_headers(1, 2 * KIB)),
            431,
        ),
        (
            "12 header fields",
            get("/public/fields", &pad_headers(11, 20)),
            431,
        ),
        (
            "5.4 KB head in 900-byte lines",
            get("/public/head", &pad_headers(6, 900)),
            431,
        ),
    ];
    for (case, bytes, status) in &refused {
        expect_refused_head(&mut f, &env, case, bytes, *status);
    }
    let accepted = [
        (
            "900-byte target",
            get(
                &format!("/public/{}", "u".repeat(900 - "/public/".len())),
                "",
            ),
        ),
        (
            "900-byte header line",
            get("/public/l", &pad_headers(1, 900)),
        ),
        ("9 header fields", get("/public/f", &pad_headers(8, 20))),
        (
            "2.8 KB head in 900-byte lines",
            get("/public/h", &pad_headers(3, 900)),
        ),
    ];
    for (case, bytes) in &accepted {
        expect_accepted_head(&mut f, &env, case, bytes);
    }
    f.assert_none();
}

/// An unfinished head (no final CRLF) of `total` bytes in lines of at most `line` bytes.
fn unfinished_head(total: usize, line: usize) -> Vec<u8> {
    let mut head = b"GET /public/slow HTTP/1.1\r\nHost: a\r\n".to_vec();
    let mut i = 0;
    while head.len() < total {
        let name = format!("X-Pad-{i}: ");
        let len = line.min(total - head.len()).max(name.len() + 3) - 2;
        head.extend_from_slice(name.as_bytes());
        head.extend(std::iter::repeat_n(b'p', len - name.len()));
        head.extend_from_slice(b"\r\n");
        i += 1;
    }
    head
}

/// Opens `n` connections and writes `head` on each (within `budget` in all).
fn open_unfinished(port: u16, n: usize, head: &[u8], budget: Duration) -> Vec<TcpStream> {
    let deadline = Instant::now() + budget;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if Instant::now() >= deadline {
            break;
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        s.set_write_timeout(Some(Duration::from_secs(2))).ok();
        // A refused head may be cut off while it is written: the answer is read later.
        let _ = s.write_all(head);
        out.push(s);
    }
    out
}

/// For each connection: the first status it answered (if any) and whether it was closed,
/// all within `budget`.
fn outcomes(streams: &mut [TcpStream], budget: Duration) -> Vec<(Option<u16>, bool)> {
    let deadline = Instant::now() + budget;
    streams
        .iter_mut()
        .map(|s| {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(20));
            let (bytes, closed) = read_until_close(s, left);
            let status = parse_responses(&bytes, closed).first().map(|r| r.status);
            (status, closed)
        })
        .collect()
}

/// 300 connections each holding a 30 KiB unfinished head (under the 32 KiB limit, so the
/// gateway must buffer them) cost the gateway well under 64 MiB over its idle RSS
/// (300 × 32 KiB ≈ 10 MiB plus overhead), and do not keep a normal request from being
/// answered within 2 s. 300 more with 40 KiB heads are refused with 431 instead of
/// buffered, and 300 with 900 KiB heads (the old 1 MiB head buffer took about 200 MB for
/// those) leave the peak RSS within the same bound.
#[test]
fn unfinished_heads_hold_bounded_memory() {
    let env = start("", &[route("public", "")]);
    let pid = env.gw.proc.pid();
    // Warm up (thread pools, upstream connection), then take the idle footprint.
    for _ in 0..3 {
        let r = roundtrip(
            &mut connect(env.gw.port),
            &get("/public/warm", "Connection: close\r\n"),
            Duration::from_secs(5),
        );
        assert_eq!(status(&r), Some(200), "warm-up request: {}", text(&r));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (idle_rss, _) = memory_kib(pid);
    let bound_kib = 64 * 1024;

    // 1. 300 × 30 KiB, held.
    let mut held = open_unfinished(
        env.gw.port,
        300,
        &unfinished_head(30 * KIB, KIB),
        Duration::from_secs(30),
    );
    assert_eq!(held.len(), 300, "could not open 300 connections");
    std::thread::sleep(Duration::from_millis(1000));
    let (rss_held, _) = memory_kib(pid);
    let started = Instant::now();
    let r = roundtrip(
        &mut connect(env.gw.port),
        &get("/public/normal", "Connection: close\r\n"),
        Duration::from_secs(2),
    );
    let took = started.elapsed();
    // The held connections are still waiting: none was answered or closed.
    let early = outcomes(&mut held[..20], Duration::from_millis(200));
    assert!(
        early.iter().all(|&(s, closed)| s.is_none() && !closed),
        "30 KiB heads are within the limits and must be waiting, not answered: {early:?}"
    );

    // 2. 300 × 40 KiB: each refused with 431 and closed.
    let mut refused = open_unfinished(
        env.gw.port,
        300,
        &unfinished_head(40 * KIB, KIB),
        Duration::from_secs(30),
    );
    let answers = outcomes(&mut refused, Duration::from_secs(15));
    drop(refused);
    let got_431 = answers.iter().filter(|(s, _)| *s == Some(431)).count();
    let closed = answers.iter().filter(|(_, c)| *c).count();
    let other: Vec<_> = answers
        .iter()
        .filter(|(s, _)| s.is_some() && *s != Some(431))
        .collect();

    // 3. 300 × 900 KiB.
    let mut huge = open_unfinished(
        env.gw.port,
        300,
        &unfinished_head(900 * KIB, 5 * KIB),
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (_, hwm) = memory_kib(pid);
    let huge_answers = outcomes(&mut huge, Duration::from_secs(15));
    drop(huge);
    drop(held);
    let huge_closed = huge_answers.iter().filter(|(_, c)| *c).count();

    eprintln!(
        "memory: idle RSS {idle_rss} KiB; with 300 × 30 KiB held {rss_held} KiB; peak after 300 × 900 KiB {hwm} KiB; 40 KiB heads: {got_431} × 431, {closed} closed; 900 KiB heads: {huge_closed} closed; normal GET {took:?}"
    );
    assert_eq!(status(&r), Some(200), "normal GET: {}", text(&r));
    assert!(
        took < Duration::from_secs(2),
        "a normal GET took {took:?} while 300 unfinished heads were held"
    );
    assert!(
        rss_held.saturating_sub(idle_rss) < bound_kib,
        "300 × 30 KiB unfinished heads grew the RSS from {idle_rss} KiB to {rss_held} KiB (bound: +{bound_kib} KiB)"
    );
    assert!(
        other.is_empty() && closed == answers.len() && answers.len() == 300,
        "40 KiB unfinished heads: {} connections, {closed} closed, {got_431} answered 431, other answers {other:?}",
        answers.len()
    );
    // A refusal that races the client's writes can reach it as a reset that discards the
    // 431; nearly all must carry it.
    assert!(
        got_431 >= 285,
        "only {got_431} of 300 unfinished 40 KiB heads were answered 431"
    );
    assert!(
        huge_closed == huge_answers.len(),
        "900 KiB unfinished heads: only {huge_closed} of {} connections closed",
        huge_answers.len()
    );
    assert!(
        hwm.saturating_sub(idle_rss) < bound_kib,
        "peak RSS {hwm} KiB after 300 × 900 KiB unfinished heads; idle was {idle_rss} KiB (bound: +{bound_kib} KiB)"
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts and connection reuse
// ---------------------------------------------------------------------------------------------

/// `client_header_timeout` bounds the whole head, not each read: a head trickled one byte
/// every 500 ms (no gap anywhere near 2 s) is cut off after about 2 s with 408 or a close.
#[test]
fn trickled_head_is_cut_off_by_the_total_header_timeout() {
    let env = start("client_header_timeout: 2s", &[route("public", "")]);
    let mut s = connect(env.gw.port);
    s.write_all(b"GET /public/trickle HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .expect("write the start of the head");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut closed_after = None;
    let mut chunk = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    // At most 24 × 500 ms = 12 s.
    for _ in 0..24 {
        if s.write_all(b"x").is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let answer = parse_responses(&got, true);
    let Some(after) = closed_after else {
        panic!(
            "a head trickled for {:?} was never cut off (client_header_timeout: 2s); got {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&got)
        );
    };
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_secs(6),
        "cut off after {after:?}, expected about 2 s"
    );
    assert!(
        answer.iter().all(|r| r.status == 408) && answer.len() <= 1,
        "expected 408 or a bare close, got {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        env.up.requests().is_empty(),
        "the unfinished head reached the upstream:\n{}",
        env.up.describe()
    );
}

/// `keepalive_timeout` closes an idle keep-alive connection without writing anything; a
/// connection that keeps sending requests every 500 ms stays open beyond it.
#[test]
fn idle_keep_alive_connections_are_closed() {
    let env = start("keepalive_timeout: 2s", &[route("public", "")]);
    let mut s = connect(env.gw.port);
    let r = roundtrip(&mut s, &get("/public/once", ""), Duration::from_secs(5));
    assert_eq!(status(&r), Some(200), "first request: {}", text(&r));
    let idle_from = Instant::now();
    let (bytes, closed) = read_until_close(&mut s, Duration::from_secs(8));
    let after = idle_from.elapsed();
    assert!(
        closed,
        "the idle keep-alive connection was still open after {after:?} (keepalive_timeout: 2s)"
    );
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_secs(6),
        "idle connection closed after {after:?}, expected about 2 s"
    );
    assert!(
        bytes.is_empty(),
        "the gateway wrote to the idle connection: {:?}",
        String::from_utf8_lossy(&bytes)
    );

    // Busy: a request every 500 ms for 4 s, all on one connection.
    let mut s = connect(env.gw.port);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let r = roundtrip(
            &mut s,
            &get(&format!("/public/busy-{n}"), ""),
            Duration::from_secs(3),
        );
        assert_eq!(
            status(&r),
            Some(200),
            "request {n} at {:?} on a busy keep-alive connection: {}",
            started.elapsed(),
            text(&r)
        );
        assert!(
            r.as_ref()
                .ok()
                .and_then(|r| r.header("connection"))
                .is_none_or(|v| !v.eq_ignore_ascii_case("close")),
            "request {n}: the busy connection was told to close: {}",
            text(&r)
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(n >= 7, "only {n} requests in 4 s");
    assert_eq!(
        env.up.requests().len(),
        n + 1,
        "every request reaches the upstream once:\n{}",
        env.up.describe()
    );
}

/// `keepalive_requests: 3`: the third response on a connection says `Connection: close` (or
/// the connection closes after it), and a fourth request there gets no answer.
#[test]
fn keepalive_requests_caps_requests_per_connection() {
    let env = start("keepalive_requests: 3", &[route("public", "")]);
    let mut s = connect(env.gw.port);
    for i in 1..=2 {
        let r = roundtrip(
            &mut s,
            &get(&format!("/public/r{i}"), ""),
            Duration::from_secs(5),
        );
        assert_eq!(status(&r), Some(200), "request {i}: {}", text(&r));
        assert!(
            r.as_ref()
                .ok()
                .and_then(|r| r.header("connection"))
                .is_none_or(|v| !v.eq_ignore_ascii_case("close")),
            "request {i} of 3 already closes the connection: {}",
            text(&r)
        );
    }
    let r = roundtrip(&mut s, &get("/public/r3", ""), Duration::from_secs(5));
    assert_eq!(status(&r), Some(200), "request 3: {}", text(&r));
    let says_close = r
        .as_ref()
        .ok()
        .and_then(|r| r.header("connection"))
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let (extra, closed) = read_until_close(&mut s, Duration::from_millis(1000));
    assert!(
        says_close || closed,
        "the third response neither says `Connection: close` nor is the connection closed: {}",
        text(&r)
    );
    assert!(
        extra.is_empty(),
        "unexpected bytes after the third response"
    );
    // The fourth request: not answered.
    let _ = s.write_all(&get("/public/r4", ""));
    let (fourth, closed) = read_until_close(&mut s, Duration::from_secs(3));
    assert!(
        fourth.is_empty(),
        "a fourth request on the connection was answered: {:?}",
        String::from_utf8_lossy(&fourth)
    );
    assert!(
        closed,
        "the connection is still open after the third request"
    );
    let targets: Vec<String> = env.up.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        ["/public/r1", "/public/r2", "/public/r3"],
        "upstream requests"
    );
}

/// The value of a counter in the admin listener's `/metrics`, summed over its labels.
fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", gw.admin_port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let r = roundtrip(
        &mut s,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .ok()?;
    let text = String::from_utf8_lossy(&r.body).to_string();
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// `max_connections: 5`: with five connections open, a sixth is closed at once without an
/// answer and counted in `portcullis_connections_refused_total`; once one of the five
/// closes, a new connection is served again.
#[test]
fn max_connections_closes_the_connections_beyond_it() {
    let env = start("max_connections: 5", &[route("public", "")]);
    let mut five: Vec<TcpStream> = (0..5)
        .map(|i| {
            let mut s = connect(env.gw.port);
            let r = roundtrip(
                &mut s,
                &get(&format!("/public/c{i}"), ""),
                Duration::from_secs(5),
            );
            assert_eq!(status(&r), Some(200), "connection {i} of 5: {}", text(&r));
            s
        })
        .collect();

    let mut sixth = connect(env.gw.port);
    let started = Instant::now();
    let _ = sixth.write_all(&get("/public/sixth", ""));
    let (bytes, closed) = read_until_close(&mut sixth, Duration::from_secs(3));
    let after = started.elapsed();
    assert!(
        bytes.is_empty(),
        "the sixth connection was answered: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        closed && after < Duration::from_secs(1),
        "the sixth connection was not closed at once (closed: {closed}, after {after:?})"
    );
    assert!(
        !env.up
            .requests()
            .iter()
            .any(|r| r.target == "/public/sixth"),
        "the sixth connection's request reached the upstream"
    );

    // One of the five goes away: a new connection is served again.
    drop(five.remove(0));
    let refused = {
        let mut v = None;
        wait_for(Duration::from_secs(3), || {
            v = metric(&env.gw, "portcullis_connections_refused_total");
            v.is_some()
        });
        v
    };
    assert!(
        refused.is_some_and(|v| v >= 1.0),
        "portcullis_connections_refused_total = {refused:?}, expected ≥ 1"
    );
    let mut last = String::new();
    let served = wait_for(Duration::from_secs(3), || {
        let mut s = connect(env.gw.port);
        let r = roundtrip(
            &mut s,
            &get("/public/again", "Connection: close\r\n"),
            Duration::from_secs(2),
        );
        last = text(&r);
        status(&r) == Some(200)
    });
    assert!(served, "a new connection after one of five closed: {last}");
    drop(five);
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// A route without `max_body_size` gets the 1 MiB default: one byte more is refused with 413
/// from the declared length (nothing forwarded), exactly 1 MiB passes.
#[test]
fn default_body_limit_is_one_mebibyte() {
    let env = start("", &[route("public", "")]);
    // Only the head: the 413 must come from the declared length, before any body.
    let mut s = connect(env.gw.port);
    let r = roundtrip(
        &mut s,
        post_head("/public/over", MIB + 1).as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), Some(413), "1 MiB + 1 byte: {}", text(&r));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        env.up.requests().is_empty(),
        "the refused body's request reached the upstream:\n{}",
        env.up.describe()
    );

    let r = send_with_body(
        env.gw.port,
        post_head("/public/exact", MIB),
        vec![b'b'; MIB],
    );
    assert_eq!(status(&r), Some(200), "exactly 1 MiB: {}", text(&r));
    let recs = env.up.requests();
    assert!(
        matches!(&recs[..], [r] if r.complete && r.body.len() == MIB),
        "the 1 MiB body was not forwarded whole:\n{}",
        describe(&recs)
    );
}

/// A route's own `max_body_size` overrides the default, upwards too.
#[test]
fn route_body_limit_overrides_the_default() {
    let env = start("", &[route("big", "max_body_size: 10m")]);
    let r = send_with_body(
        env.gw.port,
        post_head("/big/five", 5 * MIB),
        vec![b'b'; 5 * MIB],
    );
    assert_eq!(status(&r), Some(200), "5 MiB on a 10m route: {}", text(&r));
    let recs = env.up.requests();
    assert!(
        matches!(&recs[..], [r] if r.complete && r.body.len() == 5 * MIB),
        "the 5 MiB body was not forwarded whole:\n{}",
        describe(&recs)
    );
    let mut s = connect(env.gw.port);
    let r = roundtrip(
        &mut s,
        post_head("/big/eleven", 11 * MIB).as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), Some(413), "11 MiB on a 10m route: {}", text(&r));
}

/// `max_body_size: "0"` on a route means unlimited.
#[test]
fn route_body_limit_zero_means_unlimited() {
    let env = start("", &[route("unlimited", "max_body_size: \"0\"")]);
    let r = send_with_body(
        env.gw.port,
        post_head("/unlimited/three", 3 * MIB),
        vec![b'b'; 3 * MIB],
    );
    assert_eq!(
        status(&r),
        Some(200),
        "3 MiB on an unlimited route: {}",
        text(&r)
    );
    let recs = env.up.requests();
    assert!(
        matches!(&recs[..], [r] if r.complete && r.body.len() == 3 * MIB),
        "the 3 MiB body was not forwarded whole:\n{}",
        describe(&recs)
    );
}

/// `server.limits.max_body_size` changes the default of routes without their own.
#[test]
fn server_body_limit_changes_the_default() {
    let env = start(
        "max_body_size: 2k",
        &[route("public", ""), route("big", "max_body_size: 10m")],
    );
    let mut s = connect(env.gw.port);
    let r = roundtrip(
        &mut s,
        post_head("/public/over", 2 * KIB + 1).as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(
        status(&r),
        Some(413),
        "2 KiB + 1 with a 2k default: {}",
        text(&r)
    );
    let r = send_with_body(
        env.gw.port,
        post_head("/public/at", 2 * KIB),
        vec![b'b'; 2 * KIB],
    );
    assert_eq!(
        status(&r),
        Some(200),
        "2 KiB with a 2k default: {}",
        text(&r)
    );
    let r = send_with_body(
        env.gw.port,
        post_head("/big/more", 64 * KIB),
        vec![b'b'; 64 * KIB],
    );
    assert_eq!(
        status(&r),
        Some(200),
        "64 KiB on a route with its own 10m: {}",
        text(&r)
    );
    let targets: Vec<String> = env.up.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/public/at", "/big/more"], "upstream requests");
}

/// A chunked body over the route's limit (64k; 200 KiB sent in 8 KiB chunks): the client
/// gets 413, and the upstream request is abandoned midway — aborted, never complete, at most
/// 64 KiB of body — on a connection that carries nothing after it.
#[test]
fn chunked_body_over_the_limit_is_abandoned_upstream() {
    let env = start("", &[route("small", "max_body_size: 64k")]);
    let mut s = connect(env.gw.port);
    s.write_all(b"POST /small/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("write the head");
    let chunk = format!("{:x}\r\n{}\r\n", 8 * KIB, "c".repeat(8 * KIB));
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let mut sent = 0;
    // Chunk by chunk, looking for the answer in between (the gateway may stop reading).
    for _ in 0..25 {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
        sent += 8 * KIB;
        s.set_read_timeout(Some(Duration::from_millis(50))).ok();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    if sent == 200 * KIB {
        let _ = s.write_all(b"0\r\n\r\n");
    }
    let (rest, _) = read_until_close(&mut s, Duration::from_secs(5));
    raw.extend_from_slice(&rest);
    let answers = parse_responses(&raw, true);
    assert_eq!(
        answers.first().map(|r| r.status),
        Some(413),
        "200 KiB chunked on a 64k route ({sent} bytes sent): {:?}",
        String::from_utf8_lossy(&raw)
    );

    let aborted = wait_for(Duration::from_secs(5), || {
        env.up.requests().first().is_some_and(|r| r.aborted)
    });
    let recs = env.up.requests();
    assert!(
        aborted,
        "the upstream request was not abandoned:\n{}",
        describe(&recs)
    );
    let first = &recs[0];
    assert!(
        !first.complete && first.body.len() <= 64 * KIB,
        "the over-limit body looks complete or exceeds 64 KiB upstream:\n{}",
        describe(&recs)
    );

    // A later request goes through, on another upstream connection.
    let r = roundtrip(
        &mut connect(env.gw.port),
        &get("/small/after", "Connection: close\r\n"),
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), Some(200), "request after the 413: {}", text(&r));
    let recs = env.up.requests();
    assert!(
        recs.iter().skip(1).all(|r| r.conn != first.conn),
        "the upstream connection of the abandoned body carried another request:\n{}",
        describe(&recs)
    );
    assert!(
        recs.iter()
            .any(|r| r.target == "/small/after" && r.complete),
        "{}",
        describe(&recs)
    );
}

/// `client_body_timeout: 2s`: a body that stalls after 10 of 100 bytes is cut off with 408
/// (or a close) after about 2 s, and the upstream request never completes.
#[test]
fn stalled_body_times_out() {
    let env = start("client_body_timeout: 2s", &[route("public", "")]);
    let mut s = connect(env.gw.port);
    s.write_all(format!("{}{}", post_head("/public/stall", 100), "x".repeat(10)).as_bytes())
        .expect("write head and 10 bytes");
    let started = Instant::now();
    let ex: Exchange = {
        let (raw, closed) = read_until_close(&mut s, Duration::from_secs(8));
        Exchange {
            responses: parse_responses(&raw, closed),
            closed,
            raw,
            elapsed: started.elapsed(),
        }
    };
    let answered_408 = ex.statuses() == [408];
    assert!(
        answered_408 || (ex.responses.is_empty() && ex.closed),
        "expected 408 or a close after the body stalled; got {:?} after {:?} (closed: {}):\n{}",
        ex.statuses(),
        ex.elapsed,
        ex.closed,
        ex.text()
    );
    assert!(
        ex.elapsed >= Duration::from_millis(1500) && ex.elapsed <= Duration::from_secs(6),
        "stalled body cut off after {:?}, expected about 2 s",
        ex.elapsed
    );
    std::thread::sleep(Duration::from_millis(300));
    let recs = env.up.requests();
    assert!(
        recs.iter().all(|r| !r.complete),
        "the stalled request completed upstream:\n{}",
        describe(&recs)
    );
}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// Percent-escapes that decode to invalid UTF-8 (overlong `..`, a lone 0xFF, a truncated
/// sequence, an encoded surrogate) are refused with 400 and forwarded nowhere; a valid
/// escaped `é` passes.
#[test]
fn invalid_utf8_in_paths_is_refused() {
    let env = start("", &[route("public", "")]);
    let mut f = Failures::default();
    for target in [
        "/public/%c0%ae%c0%ae/admin/x",
        "/public/%ff",
        "/public/a%c3",
        "/public/%c3/x",
        "/public/%ed%a0%80",
    ] {
        env.up.clear();
        let ex = exchange(env.gw.port, &get(target, ""), 1);
        std::thread::sleep(Duration::from_millis(100));
        let recs = env.up.requests();
        f.check(
            ex.statuses() == [400] && recs.is_empty(),
            target,
            format!(
                "expected 400 and nothing forwarded; client saw {:?}:\n{}\nupstream:\n{}",
                ex.statuses(),
                ex.text(),
                describe(&recs)
            ),
        );
    }
    env.up.clear();
    let ex = exchange(env.gw.port, &get("/public/caf%c3%a9", ""), 1);
    let recs = env.up.requests();
    f.check(
        ex.statuses() == [200]
            && matches!(&recs[..], [r] if r.target.eq_ignore_ascii_case("/public/caf%c3%a9")),
        "/public/caf%c3%a9",
        format!(
            "expected 200 and the path forwarded; client saw {:?}:\n{}\nupstream:\n{}",
            ex.statuses(),
            ex.text(),
            describe(&recs)
        ),
    );
    f.assert_none();
}
