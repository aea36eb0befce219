//! Request smuggling and framing abuse at the edge, end to end over raw sockets.
//!
//! Every case writes exact bytes to the gateway and checks two things: what the gateway
//! answered (a `400` and a closed connection, or correct framing), and what a strict
//! upstream ([`RecordingUpstream`]) received — never a request hidden in another one's body
//! (`/admin/smuggled`), never ambiguous framing (the upstream records that as malformed),
//! and exactly as many requests as a correct parser yields.
//!
//! `/admin/` and `/private/` need a token, `/public/` does not. A smuggled
//! `GET /admin/smuggled` that the gateway itself parsed would be answered `401` (one
//! response too many); one that reached the upstream unparsed by the gateway would show up
//! in the upstream's records. Both are checked.
//!
//! Each test starts one gateway, runs its cases in a loop, and fails at the end listing
//! every case that went wrong.

use std::path::Path;
use std::time::Duration;

use portcullis_tests::jwt::TestKey;
use portcullis_tests::recording_upstream::{
    describe, exchange, Exchange, Recorded, RecordingUpstream,
};
use portcullis_tests::*;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The request hidden in bodies: the route needs a token, so it must never reach the upstream.
const SMUGGLED: &str = "GET /admin/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

struct Env {
    up: RecordingUpstream,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

/// A gateway with `/public/` (no auth), `/private/` and `/admin/` (token required, issuer
/// with a local key file) all proxied to one recording upstream.
fn start() -> Env {
    let dir = tempdir();
    let up = RecordingUpstream::start();
    let gw = start_gateway(dir.path(), &config(dir.path(), up.port));
    Env { up, gw, _dir: dir }
}

fn config(dir: &Path, upstream: u16) -> String {
    let key = TestKey::ec_p256().with_kid("k1");
    let pem = dir.join("issuer-public.pem");
    std::fs::write(&pem, key.public_pem()).expect("write the issuer's PEM");
    let route = |name: &str, auth: &str| {
        format!("  - name: {name}\n    match: {{path: {{prefix: /{name}/}}}}\n    auth: {auth}\n    upstream: app\n")
    };
    format!(
        "issuers:\n  - name: main\n    issuer: https://edge.issuer.test\n    key_file: {}\n    audiences: [demo]\nupstreams:\n  app:\n    backends: [\"127.0.0.1:{upstream}\"]\nroutes:\n{}{}{}",
        pem.display(),
        route("public", "public"),
        route("private", "required"),
        route("admin", "required"),
    )
}

/// The upstream's records once they settled (requests still arriving are waited for).
fn settled(up: &RecordingUpstream) -> Vec<Recorded> {
    std::thread::sleep(Duration::from_millis(150));
    up.requests()
}

/// Checks that hold for every case: nothing smuggled, nothing ambiguous forwarded.
fn common(f: &mut Failures, case: &str, ex: &Exchange, recs: &[Recorded]) {
    f.check(
        !recs.iter().any(|r| r.target.contains("/admin/smuggled")),
        case,
        format!(
            "the smuggled request reached the upstream:\n{}",
            describe(recs)
        ),
    );
    f.check(
        recs.iter().all(|r| r.malformed.is_none()),
        case,
        format!(
            "the gateway forwarded ambiguous or invalid framing (a strict upstream refused it):\n{}\nclient saw:\n{}",
            describe(recs),
            ex.text()
        ),
    );
    f.check(
        ex.responses.iter().all(|r| r.status != 401)
            || ex.responses.first().is_some_and(|r| r.status == 401),
        case,
        format!(
            "a 401 after the first response: the gateway parsed a request hidden in a body:\n{}",
            ex.text()
        ),
    );
}

/// The gateway refused the head: one 400, connection closed, nothing forwarded.
fn expect_refused(f: &mut Failures, case: &str, env: &Env, bytes: &[u8]) {
    env.up.clear();
    let ex = exchange(env.gw.port, bytes, 1);
    let recs = settled(&env.up);
    common(f, case, &ex, &recs);
    f.check(
        ex.statuses() == [400],
        case,
        format!(
            "expected exactly one 400, got {:?}:\n{}",
            ex.statuses(),
            ex.text()
        ),
    );
    f.check(
        ex.closed,
        case,
        format!("the connection stayed open after the 400:\n{}", ex.text()),
    );
    f.check(
        recs.is_empty(),
        case,
        format!(
            "a refused request reached the upstream:\n{}",
            describe(&recs)
        ),
    );
}

/// The gateway refused the body after forwarding the head: one 400, connection closed, and
/// the upstream request is abandoned (never complete).
fn expect_refused_body(f: &mut Failures, case: &str, env: &Env, bytes: &[u8]) {
    env.up.clear();
    let ex = exchange(env.gw.port, bytes, 1);
    let recs = settled(&env.up);
    common(f, case, &ex, &recs);
    f.check(
        ex.statuses() == [400],
        case,
        format!(
            "expected exactly one 400, got {:?}:\n{}",
            ex.statuses(),
            ex.text()
        ),
    );
    f.check(
        ex.closed,
        case,
        format!("the connection stayed open after the 400:\n{}", ex.text()),
    );
    f.check(
        recs.len() <= 1 && recs.iter().all(|r| !r.complete),
        case,
        format!(
            "the upstream saw a complete request although the body was refused:\n{}",
            describe(&recs)
        ),
    );
    if !recs.is_empty() {
        let aborted = wait_for(Duration::from_secs(3), || {
            env.up.requests().iter().all(|r| r.aborted && !r.complete)
        });
        f.check(
            aborted,
            case,
            format!(
                "the upstream request was not abandoned after the refused body:\n{}",
                env.up.describe()
            ),
        );
    }
}

/// The gateway accepted a chunked body: one 200, and the upstream got exactly one request
/// with one `Transfer-Encoding: chunked`, no `Content-Length`, and the decoded `body`.
fn expect_chunked(
    f: &mut Failures,
    case: &str,
    env: &Env,
    bytes: &[u8],
    body: &[u8],
    must_close: bool,
) {
    env.up.clear();
    let ex = exchange(env.gw.port, bytes, 1);
    let recs = settled(&env.up);
    common(f, case, &ex, &recs);
    f.check(
        ex.statuses() == [200],
        case,
        format!(
            "expected exactly one 200, got {:?}:\n{}",
            ex.statuses(),
            ex.text()
        ),
    );
    if must_close {
        f.check(
            ex.closed,
            case,
            format!(
                "Content-Length and Transfer-Encoding together: the connection must close after the response (RFC 9112 §6.1):\n{}",
                ex.text()
            ),
        );
    }
    let ok = match &recs[..] {
        [r] => {
            r.complete
                && r.body == body
                && r.header_count("transfer-encoding") == 1
                && r.header("transfer-encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
                && r.header_count("content-length") == 0
        }
        _ => false,
    };
    f.check(
        ok,
        case,
        format!(
            "expected one complete chunked request with body {:?} upstream:\n{}",
            String::from_utf8_lossy(body),
            describe(&recs)
        ),
    );
}

fn post(target: &str, headers: &str, body: &str) -> Vec<u8> {
    format!("POST {target} HTTP/1.1\r\nHost: a\r\n{headers}\r\n{body}").into_bytes()
}

fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

// ---------------------------------------------------------------------------------------------
// Content-Length and Transfer-Encoding
// ---------------------------------------------------------------------------------------------

/// Both headers: `Transfer-Encoding` wins (RFC 9112 §6.3), `Content-Length` is not forwarded,
/// and the connection closes after the response so nothing after the chunked body is read.
/// A CL-framed reading of the first case would hide `GET /admin/smuggled` after `0\r\n\r\n`;
/// of the second, would leave the chunk data (a whole request) for the next read.
#[test]
fn content_length_with_transfer_encoding_is_framed_by_chunked_and_closed() {
    let env = start();
    let mut f = Failures::default();
    let tail = format!("0\r\n\r\n{SMUGGLED}");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "CL then TE, smuggled request after the last chunk",
            post(
                "/public/cl-te",
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    tail.len()
                ),
                &tail,
            ),
            Vec::new(),
        ),
        (
            "TE then CL, smuggled request inside a chunk",
            post(
                "/public/te-cl",
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                &format!("{}0\r\n\r\n", chunk(SMUGGLED)),
            ),
            SMUGGLED.as_bytes().to_vec(),
        ),
        (
            "duplicate CL plus TE",
            post(
                "/public/dup-cl-te",
                "Content-Length: 5\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                &format!("{}0\r\n\r\n{SMUGGLED}", chunk("hello")),
            ),
            b"hello".to_vec(),
        ),
    ];
    for (case, bytes, body) in &cases {
        // Refusing these outright would be safe too; today they are accepted.
        expect_chunked(&mut f, case, &env, bytes, body, true);
    }
    f.assert_none();
}

/// Content-Length values that cannot frame a body unambiguously: 400 and close, nothing
/// forwarded, the bytes after them never read as a request.
#[test]
fn invalid_or_conflicting_content_length_is_refused() {
    let env = start();
    let mut f = Failures::default();
    let long = 5 + SMUGGLED.len();
    let body = format!("hello{SMUGGLED}");
    let cases: Vec<(&str, String)> = vec![
        (
            "two different values",
            format!("Content-Length: 5\r\nContent-Length: {long}\r\n"),
        ),
        (
            "a list of different values",
            format!("Content-Length: 5, {long}\r\n"),
        ),
        ("plus sign", "Content-Length: +5\r\n".into()),
        ("minus sign", "Content-Length: -1\r\n".into()),
        ("hex", "Content-Length: 0x5\r\n".into()),
        ("empty", "Content-Length: \r\n".into()),
        (
            "larger than 64 bits",
            "Content-Length: 99999999999999999999999\r\n".into(),
        ),
    ];
    for (case, headers) in &cases {
        expect_refused(&mut f, case, &env, &post("/public/cl", headers, &body));
    }
    f.assert_none();
}

/// Identical duplicates (`Content-Length: 5` twice, or `5, 5`) may be accepted, but then
/// RFC 9112 §6.3 requires replacing them with one valid `Content-Length` before forwarding:
/// an upstream that reads the list differently (refuses it, or takes it for no length)
/// would otherwise frame the body differently from the gateway, and body bytes become the
/// next request on a pooled upstream connection.
#[test]
fn identical_duplicate_content_lengths_are_refused_or_forwarded_as_one() {
    let env = start();
    let mut f = Failures::default();
    let cases = [
        (
            "two identical headers",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
        ),
        ("a list of identical values", "Content-Length: 5, 5\r\n"),
    ];
    for (case, headers) in cases {
        env.up.clear();
        let bytes = post("/public/dup", headers, "hello");
        let ex = exchange(env.gw.port, &bytes, 1);
        let recs = settled(&env.up);
        common(&mut f, case, &ex, &recs);
        let refused = ex.statuses() == [400] && ex.closed && recs.is_empty();
        let forwarded_as_one = ex.statuses() == [200]
            && matches!(&recs[..], [r] if r.complete
                && r.body == b"hello"
                && r.header_count("content-length") == 1
                && r.header("content-length") == Some("5"));
        f.check(
            refused || forwarded_as_one,
            case,
            format!(
                "expected a 400 + close with nothing forwarded, or one request upstream with a single `Content-Length: 5`; client saw {:?}:\n{}\nupstream:\n{}",
                ex.statuses(),
                ex.text(),
                describe(&recs)
            ),
        );
    }
    f.assert_none();
}

/// Transfer-Encoding spellings: the ones that still mean "chunked" last are forwarded as one
/// plain `Transfer-Encoding: chunked`; everything else (chunked not last, unknown codings,
/// obs-fold, whitespace before the colon, control characters) is refused with 400 + close.
#[test]
fn transfer_encoding_obfuscations_are_normalised_or_refused() {
    let env = start();
    let mut f = Failures::default();
    let chunked_hello = format!("{}0\r\n\r\n", chunk("hello"));
    let accepted = [
        ("trailing space", "Transfer-Encoding: chunked \r\n"),
        ("tabs around the value", "Transfer-Encoding:\tchunked\t\r\n"),
        ("capitalised", "Transfer-Encoding: Chunked\r\n"),
        (
            "leading empty list element",
            "Transfer-Encoding: ,chunked\r\n",
        ),
        (
            "identity before chunked",
            "Transfer-Encoding: identity, chunked\r\n",
        ),
        (
            "two headers, chunked last",
            "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "chunked twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
    ];
    for (case, headers) in accepted {
        // Whatever comes after the body must not be read as a request either.
        let bytes = post("/public/te", headers, &format!("{chunked_hello}{SMUGGLED}"));
        expect_chunked(&mut f, case, &env, &bytes, b"hello", false);
    }
    let with_cl = |te: &str| format!("{te}Content-Length: 5\r\n");
    let refused = [
        ("xchunked", with_cl("Transfer-Encoding: xchunked\r\n")),
        (
            "xchunked without CL",
            "Transfer-Encoding: xchunked\r\n".to_string(),
        ),
        (
            "chunked, identity",
            "Transfer-Encoding: chunked, identity\r\n".to_string(),
        ),
        (
            "two headers, chunked first",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n".to_string(),
        ),
        (
            "obs-fold continuation of the value",
            with_cl("Transfer-Encoding: identity\r\n chunked\r\n"),
        ),
        (
            "obs-fold line that looks like a header",
            with_cl("X-Foo: bar\r\n Transfer-Encoding: chunked\r\n"),
        ),
        (
            "space before the colon",
            with_cl("Transfer-Encoding : chunked\r\n"),
        ),
        (
            "vertical tab",
            with_cl("Transfer-Encoding: \x0bchunked\r\n"),
        ),
        ("empty value", with_cl("Transfer-Encoding: \r\n")),
    ];
    for (case, headers) in &refused {
        // Both readings are present: CL frames "hello", TE frames a chunked body.
        let body = if headers.contains("Content-Length") {
            format!("hello{SMUGGLED}")
        } else {
            format!("{chunked_hello}{SMUGGLED}")
        };
        expect_refused(&mut f, case, &env, &post("/public/te", headers, &body));
    }
    f.assert_none();
}

/// HTTP/1.0 has no chunked coding: `Transfer-Encoding` there is faulty framing (RFC 9112
/// §6.1) and is refused even with `Connection: keep-alive`.
#[test]
fn http10_with_transfer_encoding_is_refused() {
    let env = start();
    let mut f = Failures::default();
    let bytes = format!(
        "POST /public/ten HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n{}0\r\n\r\n{SMUGGLED}",
        chunk("hello")
    );
    expect_refused(&mut f, "HTTP/1.0 + TE", &env, bytes.as_bytes());
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Chunked bodies
// ---------------------------------------------------------------------------------------------

/// Chunk sizes and extensions a lenient parser might read differently: overflowing sizes
/// (one that wraps to 5 in 64 bits), signs, `0x`, huge or line-breaking extensions, quoted
/// strings hiding CRLF, bare LF, data longer than its size. The gateway refuses the body
/// with 400 and closes; the upstream, which already has the head, sees its request
/// abandoned — never completed, and never followed by the smuggled one.
#[test]
fn malformed_chunked_bodies_are_refused_and_never_complete_upstream() {
    let env = start();
    let mut f = Failures::default();
    let te = "Transfer-Encoding: chunked\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "size overflows 64 bits",
            format!("ffffffffffffffffff\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "size wraps to 5 in 64 bits",
            format!("10000000000000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "negative size",
            format!("-5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        ("0x prefix", format!("0x5\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        (
            "80 KB chunk extension",
            format!("5;{}\r\nhello\r\n0\r\n\r\n", "a=b;".repeat(20_000)),
        ),
        (
            "bare LF ends the extension",
            format!("5;x\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "quoted extension hiding CRLF and a request",
            format!("5;x=\"a\r\n0\r\n\r\n{SMUGGLED}\"\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "bare LF line endings in the body",
            format!("5\nhello\n0\n\n{SMUGGLED}"),
        ),
        (
            "chunk data longer than its size",
            format!("3\r\nhello{SMUGGLED}\r\n0\r\n\r\n"),
        ),
    ];
    for (case, body) in &cases {
        expect_refused_body(&mut f, case, &env, &post("/public/chunks", te, body));
    }
    // Tolerated spellings are decoded and re-framed, not passed through.
    expect_chunked(
        &mut f,
        "whitespace after the size",
        &env,
        &post("/public/chunks", te, "5 \r\nhello\r\n0\r\n\r\n"),
        b"hello",
        false,
    );
    expect_chunked(
        &mut f,
        "a Content-Length trailer is not applied",
        &env,
        &post(
            "/public/chunks",
            te,
            "5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n",
        ),
        b"hello",
        false,
    );
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Line endings, control bytes, Host
// ---------------------------------------------------------------------------------------------

/// Bare CR and NUL are refused; bare LF heads are read as lines (RFC 9112 §2.2 allows it)
/// and forwarded re-serialised with CRLF, with the same headers the gateway saw.
#[test]
fn line_ending_and_nul_abuse() {
    let env = start();
    let mut f = Failures::default();
    let refused: [(&str, &[u8]); 3] = [
        (
            "bare CR ends the request line",
            b"GET /public/cr HTTP/1.1\rHost: a\r\n\r\n",
        ),
        (
            "NUL in a header value",
            b"GET /public/nul HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n",
        ),
        (
            "NUL in a header name",
            b"GET /public/nul HTTP/1.1\r\nHost: a\r\nX-\0A: ab\r\n\r\n",
        ),
    ];
    for (case, bytes) in refused {
        expect_refused(&mut f, case, &env, bytes);
    }

    // A NUL in the target is framing-neutral (the head is well delimited): a 400 from the
    // path check, nothing forwarded; the connection may stay open.
    let case = "NUL in the request target";
    env.up.clear();
    let ex = exchange(
        env.gw.port,
        b"GET /public/n\0ul HTTP/1.1\r\nHost: a\r\n\r\n",
        1,
    );
    let recs = settled(&env.up);
    common(&mut f, case, &ex, &recs);
    f.check(
        ex.statuses() == [400] && recs.is_empty(),
        case,
        format!(
            "expected one 400 and nothing upstream; client saw {:?}:\n{}\nupstream:\n{}",
            ex.statuses(),
            ex.text(),
            describe(&recs)
        ),
    );

    // Bare LF everywhere, two pipelined requests: the upstream gets well-formed requests, in
    // order, one per response (a gateway may also drop pipelined requests and close).
    let case = "bare LF head, two pipelined requests";
    env.up.clear();
    let ex = exchange(
        env.gw.port,
        b"GET /public/lf HTTP/1.1\nHost: a\n\nGET /public/lf2 HTTP/1.1\nHost: a\n\n",
        1,
    );
    let recs = settled(&env.up);
    common(&mut f, case, &ex, &recs);
    let targets: Vec<&str> = recs.iter().map(|r| r.target.as_str()).collect();
    f.check(
        ex.responses.iter().all(|r| r.status == 200)
            && !ex.responses.is_empty()
            && ["/public/lf", "/public/lf2"].starts_with(&targets)
            && targets.len() == ex.responses.len()
            && recs
                .iter()
                .all(|r| r.complete && r.header("host") == Some("a")),
        case,
        format!(
            "client saw {:?}, upstream:\n{}",
            ex.statuses(),
            describe(&recs)
        ),
    );

    // A bare LF inside the head splits it into two header lines for the gateway; the
    // upstream must get the same two fields (and the 5-byte body), not one folded value.
    let case = "bare LF between two headers";
    env.up.clear();
    let ex = exchange(
        env.gw.port,
        b"POST /public/lfh HTTP/1.1\r\nHost: a\r\nX-A: b\nContent-Length: 5\r\n\r\nhello",
        1,
    );
    let recs = settled(&env.up);
    common(&mut f, case, &ex, &recs);
    let refused = ex.statuses() == [400] && recs.is_empty();
    let consistent = ex.statuses() == [200]
        && matches!(&recs[..], [r] if r.complete
            && r.header("x-a") == Some("b")
            && r.header("content-length") == Some("5")
            && r.body == b"hello");
    f.check(
        refused || consistent,
        case,
        format!(
            "client saw {:?}:\n{}\nupstream:\n{}",
            ex.statuses(),
            ex.text(),
            describe(&recs)
        ),
    );
    f.assert_none();
}

/// Two `Host` headers, or an absolute-form target whose authority disagrees with `Host`,
/// are refused: otherwise the gateway routes on one host and the upstream serves another.
/// When they agree, the upstream sees that one host.
#[test]
fn ambiguous_hosts_are_refused() {
    let env = start();
    let mut f = Failures::default();
    let refused: [(&str, &[u8]); 4] = [
        (
            "two Host headers",
            b"GET /public/host HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        (
            "absolute-form authority disagrees with Host",
            b"GET http://evil.example/public/x HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "absolute-form with a different port",
            b"GET http://a:81/public/x HTTP/1.1\r\nHost: a:80\r\n\r\n",
        ),
        (
            "absolute-form with userinfo",
            b"GET http://evil@a/public/x HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
    ];
    for (case, bytes) in refused {
        env.up.clear();
        let ex = exchange(env.gw.port, bytes, 1);
        let recs = settled(&env.up);
        common(&mut f, case, &ex, &recs);
        // A consistent forward (Host, X-Forwarded-Host and the routing host all the URI's
        // authority, per RFC 9112 §3.2.2) would be safe too; anything mixed is not.
        let consistent = ex.statuses() == [200]
            && matches!(&recs[..], [r] if r.header_count("host") == 1
                && r.header("host") == r.header("x-forwarded-host")
                && r.header("host").is_some_and(|h| h != "a" && h != "b"));
        let refused = ex.statuses() == [400] && ex.closed && recs.is_empty();
        f.check(
            refused || consistent,
            case,
            format!(
                "expected 400 + close (or one consistent host upstream); client saw {:?}:\n{}\nupstream:\n{}",
                ex.statuses(),
                ex.text(),
                describe(&recs)
            ),
        );
    }

    // RFC 9112 §3.2: HTTP/1.1 needs a host; HTTP/1.0 may omit it.
    let case = "HTTP/1.1 without Host";
    env.up.clear();
    let ex = exchange(env.gw.port, b"GET /public/nohost HTTP/1.1\r\n\r\n", 1);
    let recs = settled(&env.up);
    f.check(
        ex.statuses() == [400] && recs.is_empty(),
        case,
        format!(
            "expected 400 and nothing upstream; client saw {:?}:\n{}\nupstream:\n{}",
            ex.statuses(),
            ex.text(),
            describe(&recs)
        ),
    );
    let case = "HTTP/1.0 without Host";
    env.up.clear();
    let ex = exchange(env.gw.port, b"GET /public/old HTTP/1.0\r\n\r\n", 1);
    let recs = settled(&env.up);
    f.check(
        ex.statuses() == [200] && recs.len() == 1,
        case,
        format!(
            "expected 200; client saw {:?}:\n{}",
            ex.statuses(),
            ex.text()
        ),
    );

    let case = "absolute-form agreeing with Host";
    env.up.clear();
    let ex = exchange(
        env.gw.port,
        b"GET http://a/public/abs HTTP/1.1\r\nHost: a\r\n\r\n",
        1,
    );
    let recs = settled(&env.up);
    common(&mut f, case, &ex, &recs);
    f.check(
        ex.statuses() == [200]
            && matches!(&recs[..], [r] if r.target == "/public/abs"
                && r.header_count("host") == 1
                && r.header("host") == Some("a")
                && r.header("x-forwarded-host") == Some("a")),
        case,
        format!(
            "client saw {:?}, upstream:\n{}",
            ex.statuses(),
            describe(&recs)
        ),
    );
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Connection reuse: HTTP/1.0 keep-alive, early answers, Upgrade
// ---------------------------------------------------------------------------------------------

/// HTTP/1.0 with `Connection: keep-alive` and a second request pipelined behind it: each
/// response belongs to exactly one upstream request, in order; the gateway may also answer
/// the first and close.
#[test]
fn http10_keep_alive_with_a_pipelined_request_stays_in_step() {
    let env = start();
    let mut f = Failures::default();
    let case = "HTTP/1.0 keep-alive + pipelined request";
    let ex = exchange(
        env.gw.port,
        b"GET /public/one HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /public/two HTTP/1.1\r\nHost: a\r\n\r\n",
        2,
    );
    let recs = settled(&env.up);
    common(&mut f, case, &ex, &recs);
    let targets: Vec<&str> = recs.iter().map(|r| r.target.as_str()).collect();
    let seen: Vec<String> = ex
        .responses
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .collect();
    let expected_seen: Vec<String> = (1..=targets.len())
        .map(|n| format!("{{\"seen\": {n}}}"))
        .collect();
    f.check(
        !targets.is_empty()
            && ["/public/one", "/public/two"].starts_with(&targets)
            && ex.responses.iter().all(|r| r.status == 200)
            && seen == expected_seen
            && recs.iter().all(|r| r.complete),
        case,
        format!(
            "responses {seen:?} for upstream requests:\n{}\nclient saw:\n{}",
            describe(&recs),
            ex.text()
        ),
    );
    if ex.responses.len() == 1 {
        f.check(
            ex.closed,
            case,
            format!(
                "the pipelined request was neither answered nor the connection closed:\n{}",
                ex.text()
            ),
        );
    }
    f.assert_none();
}

/// A keep-alive POST to a protected route is answered 401 before its body is read. The body
/// (a whole request) must then be skipped or the connection closed — never parsed as the
/// next request. A legitimate request after the body is answered 200 if the gateway keeps
/// the connection, and nothing else is.
#[test]
fn early_401_never_reads_the_body_as_a_request() {
    let env = start();
    let mut f = Failures::default();
    let after = "GET /public/after HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases = [
        (
            "Content-Length body",
            post(
                "/private/upload",
                &format!("Content-Length: {}\r\n", SMUGGLED.len()),
                &format!("{SMUGGLED}{after}"),
            ),
        ),
        (
            "chunked body",
            post(
                "/private/upload",
                "Transfer-Encoding: chunked\r\n",
                &format!("{}0\r\n\r\n{after}", chunk(SMUGGLED)),
            ),
        ),
        (
            "Expect: 100-continue, body sent anyway",
            post(
                "/private/upload",
                &format!(
                    "Expect: 100-continue\r\nContent-Length: {}\r\n",
                    SMUGGLED.len()
                ),
                &format!("{SMUGGLED}{after}"),
            ),
        ),
    ];
    for (case, bytes) in &cases {
        env.up.clear();
        let ex = exchange(env.gw.port, bytes, 2);
        let recs = settled(&env.up);
        common(&mut f, case, &ex, &recs);
        let statuses: Vec<u16> = ex.statuses().into_iter().filter(|&s| s != 100).collect();
        let targets: Vec<&str> = recs.iter().map(|r| r.target.as_str()).collect();
        let closed_after_401 = statuses == [401] && ex.closed && recs.is_empty();
        let skipped_body = statuses == [401, 200] && targets == ["/public/after"];
        f.check(
            closed_after_401 || skipped_body,
            case,
            format!(
                "expected 401 then close, or 401 then 200 for /public/after; client saw {statuses:?}:\n{}\nupstream:\n{}",
                ex.text(),
                describe(&recs)
            ),
        );
    }
    f.assert_none();
}

/// An `Upgrade` request the upstream does not accept (it answers 200, not 101) leaves the
/// connection in HTTP: bytes after it are not tunnelled raw to the upstream, where they
/// would be a request the gateway never checked. `GET /admin/smuggled` needs a token: the
/// gateway may answer it 401 or close, the upstream must never see it.
#[test]
fn refused_upgrade_does_not_tunnel_the_next_request() {
    let env = start();
    let mut f = Failures::default();
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
    let cases = [
        (
            "GET with Upgrade",
            format!("GET /public/ws HTTP/1.1\r\nHost: a\r\n{upgrade}\r\n{SMUGGLED}").into_bytes(),
            0usize,
        ),
        (
            "POST with Upgrade and a body",
            post(
                "/public/ws",
                &format!("{upgrade}Content-Length: 5\r\n"),
                &format!("hello{SMUGGLED}"),
            ),
            5,
        ),
    ];
    for (case, bytes, body_len) in &cases {
        env.up.clear();
        let ex = exchange(env.gw.port, bytes, 2);
        let recs = settled(&env.up);
        f.check(
            !recs.iter().any(|r| r.target.contains("/admin/smuggled")),
            case,
            format!(
                "the request after the upgrade reached the upstream unchecked:\n{}",
                describe(&recs)
            ),
        );
        f.check(
            recs.iter().all(|r| r.malformed.is_none()),
            case,
            format!("malformed upstream request:\n{}", describe(&recs)),
        );
        let statuses = ex.statuses();
        f.check(
            (statuses == [200] && ex.closed) || statuses == [200, 401],
            case,
            format!(
                "expected 200 then close, or 200 then 401 for the unauthenticated request; client saw {statuses:?}:\n{}",
                ex.text()
            ),
        );
        f.check(
            matches!(&recs[..], [r] if r.target == "/public/ws" && r.complete && r.body.len() == *body_len),
            case,
            format!(
                "expected exactly the upgrade request upstream:\n{}",
                describe(&recs)
            ),
        );
    }
    f.assert_none();
}
