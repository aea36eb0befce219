//! A JWKS and OpenID discovery server for tests: serves a key set on 127.0.0.1 (and, on
//! request, a Unix socket) from a background thread, records and counts every request, and
//! can change its keys, ETag, `Cache-Control`, status, framing and timing, or fail, on demand.
//!
//! ```text
//! let key = TestKey::ec_p256().with_kid("k1");
//! let jwks = JwksServer::serving(&[&key]);
//! // issuers: [{ issuer: jwks.issuer_url(), jwks_uri: jwks.url() }]
//! jwks.set_available(false);                    // 503 from now on
//! assert!(jwks.wait_for_fetches(2, Duration::from_secs(5)));
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::jwt::TestKey;

/// The path the JWKS is served at.
pub const JWKS_PATH: &str = "/jwks.json";
/// The OpenID discovery path.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// One request the [`JwksServer`] received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Header names are lower-case.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct ServerState {
    keys: Vec<Value>,
    cache_control: Option<String>,
    etag: bool,
    fixed_etag: Option<String>,
    status: u16,
    content_length: bool,
    not_modified: usize,
    available: bool,
    hang_up: bool,
    delay: Duration,
    body_override: Option<Vec<u8>>,
    discovery_override: Option<Value>,
    routes: HashMap<String, (u16, Vec<u8>)>,
    log: Vec<RecordedRequest>,
    fetches: usize,
}

/// A JWKS and OpenID discovery server on 127.0.0.1 (a free port), running on its own tokio
/// runtime in a background thread; stops (closing every connection) when dropped.
/// [`JwksServer::serve_unix`] serves the same state on a Unix socket as well.
///
/// * `GET /jwks.json` — `{"keys": [...]}` (or the body override), `Content-Type:
///   application/json`, a strong `ETag` of the body (or the one set with
///   [`JwksServer::set_fixed_etag`]; 304 for a matching `If-None-Match` while the status is
///   200), `Cache-Control` when set, and the status set with [`JwksServer::set_status`].
/// * `GET /.well-known/openid-configuration` — `{"issuer": issuer_url(), "jwks_uri": url()}`.
/// * Any other path — 200 with the current JWKS body (so a `jku` pointing here would "work"
///   if followed), or the body given with [`JwksServer::set_route`].
///
/// Every request is recorded; [`JwksServer::set_available`]`(false)` answers 503 to
/// everything and [`JwksServer::set_hang_up`]`(true)` closes connections without answering.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<Mutex<ServerState>>,
    /// The accept loops (TCP first, then Unix sockets): stop signal and thread.
    loops: Vec<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
}

impl JwksServer {
    /// Starts a server with an empty key set.
    pub fn start() -> JwksServer {
        Self::start_on(0)
    }

    /// Starts on a fixed port (0 for any), e.g. where a shipped config expects its issuer.
    pub fn start_on(port: u16) -> JwksServer {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind JWKS server");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(ServerState {
            keys: Vec::new(),
            cache_control: None,
            etag: true,
            fixed_etag: None,
            status: 200,
            content_length: true,
            not_modified: 0,
            available: true,
            hang_up: false,
            delay: Duration::ZERO,
            body_override: None,
            discovery_override: None,
            routes: HashMap::new(),
            log: Vec::new(),
            fetches: 0,
        }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread_state = state.clone();
        let thread =
            crate::spawn_server_thread(format!("jwks-server-{}", addr.port()), move || {
                server::run(listener.into(), addr, thread_state, stop_rx)
            });
        JwksServer {
            addr,
            state,
            loops: vec![(stop_tx, thread)],
        }
    }

    /// Also serves on a Unix socket bound at `path` (same keys, settings, log and counts), for
    /// `unix:<path>:<url-path>` key sources; stops with the server.
    pub fn serve_unix(&mut self, path: &Path) {
        let listener = std::os::unix::net::UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        listener.set_nonblocking(true).expect("non-blocking");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (addr, state) = (self.addr, self.state.clone());
        let thread =
            crate::spawn_server_thread(format!("jwks-server-{}-unix", addr.port()), move || {
                server::run(listener.into(), addr, state, stop_rx)
            });
        self.loops.push((stop_tx, thread));
    }

    /// Starts a server publishing the public JWKs of `keys`.
    pub fn serving(keys: &[&TestKey]) -> JwksServer {
        let server = JwksServer::start();
        server.set_keys(keys.iter().map(|k| k.public_jwk()).collect());
        server
    }

    fn state(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>` — the issuer, without a trailing slash.
    pub fn issuer_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>/jwks.json`.
    pub fn url(&self) -> String {
        self.url_for(JWKS_PATH)
    }

    /// `http://127.0.0.1:<port>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        self.url_for(DISCOVERY_PATH)
    }

    /// `http://127.0.0.1:<port><path>` (`path` starts with `/`).
    pub fn url_for(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Replaces the published JWKs.
    pub fn set_keys(&self, keys: Vec<Value>) {
        self.state().keys = keys;
    }

    /// `Cache-Control` for JWKS responses (200 and 304); `None` sends none.
    pub fn set_cache_control(&self, value: Option<String>) {
        self.state().cache_control = value;
    }

    /// Whether JWKS responses carry an `ETag` and honour `If-None-Match` (default true).
    pub fn set_etag_enabled(&self, enabled: bool) {
        self.state().etag = enabled;
    }

    /// Sends this `ETag` (quoted, e.g. `"\"v1\""`) instead of the body's hash, so the tag can
    /// change while the keys stay the same, or stay while they change; `None` goes back to the
    /// hash. Only while ETags are enabled.
    pub fn set_fixed_etag(&self, etag: Option<String>) {
        self.state().fixed_etag = etag;
    }

    /// Status of `/jwks.json` answers (default 200), sent with the usual body and headers
    /// (e.g. 500 with a key set); only a 200 becomes a 304 on a matching `If-None-Match`.
    pub fn set_status(&self, status: u16) {
        self.state().status = status;
    }

    /// When false, `/jwks.json` bodies are sent chunked, without `Content-Length` (default
    /// true), so a client's size limit has to apply while it reads.
    pub fn set_content_length(&self, content_length: bool) {
        self.state().content_length = content_length;
    }

    /// When false every request is answered 503 (still recorded and counted).
    pub fn set_available(&self, available: bool) {
        self.state().available = available;
    }

    /// When true every request is recorded, then its connection is closed without a response.
    pub fn set_hang_up(&self, hang_up: bool) {
        self.state().hang_up = hang_up;
    }

    /// Delay before every response (the request is recorded on arrival).
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Serves these bytes at `/jwks.json` instead of the key set (garbage, huge bodies...).
    pub fn set_body_override(&self, body: Option<Vec<u8>>) {
        self.state().body_override = body;
    }

    /// Serves this document at the discovery path instead of the default one.
    pub fn set_discovery(&self, doc: Option<Value>) {
        self.state().discovery_override = doc;
    }

    /// Serves `body` with `status` at `path` (exact path-and-query match); `None` removes it.
    pub fn set_route(&self, path: &str, response: Option<(u16, Vec<u8>)>) {
        let mut state = self.state();
        match response {
            Some(r) => state.routes.insert(path.to_string(), r),
            None => state.routes.remove(path),
        };
    }

    /// Requests for `/jwks.json` so far (any query string, any answer: 200, 304, 503...).
    pub fn fetch_count(&self) -> usize {
        self.state().fetches
    }

    /// How many `/jwks.json` requests were answered 304 Not Modified.
    pub fn not_modified_count(&self) -> usize {
        self.state().not_modified
    }

    /// Path and query of every request so far, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.state().log.iter().map(|r| r.path.clone()).collect()
    }

    /// Every request so far with method and headers.
    pub fn request_log(&self) -> Vec<RecordedRequest> {
        self.state().log.clone()
    }

    /// Whether any request's path (without query) was `path`.
    pub fn was_requested(&self, path: &str) -> bool {
        self.state()
            .log
            .iter()
            .any(|r| r.path.split('?').next() == Some(path))
    }

    /// Forgets recorded requests and the fetch and 304 counts.
    pub fn clear_requests(&self) {
        let mut state = self.state();
        state.log.clear();
        state.fetches = 0;
        state.not_modified = 0;
    }

    /// Waits until at least `n` JWKS fetches were seen; returns whether that happened in time.
    pub fn wait_for_fetches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.fetch_count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The body `/jwks.json` serves right now.
    pub fn current_body(&self) -> Vec<u8> {
        server::jwks_body(&self.state())
    }

    /// The `ETag` `/jwks.json` sends right now (quoted), if enabled.
    pub fn current_etag(&self) -> Option<String> {
        server::current_etag(&self.state())
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        for (stop, thread) in self.loops.drain(..) {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

mod server {
    use super::{ServerState, DISCOVERY_PATH, JWKS_PATH};
    use http_body_util::Full;
    use hyper::body::{Bytes, Frame, Incoming, SizeHint};
    use hyper::header::HeaderValue;
    use hyper::{Request, Response, StatusCode};
    use serde_json::json;
    use sha2::{Digest as _, Sha256};
    use std::convert::Infallible;
    use std::fmt::Write as _;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    /// A full body that may hide its length, so hyper sends it chunked instead of with a
    /// `Content-Length`.
    pub(super) struct Body {
        inner: Full<Bytes>,
        sized: bool,
    }

    impl hyper::body::Body for Body {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Pin::new(&mut self.get_mut().inner).poll_frame(cx)
        }

        fn is_end_stream(&self) -> bool {
            self.sized && self.inner.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            if self.sized {
                self.inner.size_hint()
            } else {
                SizeHint::default()
            }
        }
    }

    pub(super) fn jwks_body(state: &ServerState) -> Vec<u8> {
        match &state.body_override {
            Some(body) => body.clone(),
            None => serde_json::to_vec(&json!({"keys": state.keys})).expect("JWKS serialises"),
        }
    }

    /// A strong ETag: a quoted prefix of the body's SHA-256.
    pub(super) fn etag(body: &[u8]) -> String {
        let digest = Sha256::digest(body);
        let mut tag = String::from("\"");
        for b in &digest[..16] {
            let _ = write!(tag, "{b:02x}");
        }
        tag.push('"');
        tag
    }

    /// The `ETag` of the current JWKS answer, if ETags are enabled.
    pub(super) fn current_etag(state: &ServerState) -> Option<String> {
        state.etag.then(|| {
            state
                .fixed_etag
                .clone()
                .unwrap_or_else(|| etag(&jwks_body(state)))
        })
    }

    /// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2).
    fn if_none_match_matches(header: &str, etag: &str) -> bool {
        header.split(',').map(str::trim).any(|candidate| {
            candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
        })
    }

    /// Serves on a TCP or Unix listener; `addr` is the TCP address the discovery document
    /// names.
    pub(super) async fn run(
        listener: crate::FakeListener,
        addr: SocketAddr,
        state: Arc<Mutex<ServerState>>,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        crate::serve_http1(listener, stop, move |req| handle(req, addr, state.clone())).await
    }

    async fn handle(
        req: Request<Incoming>,
        addr: SocketAddr,
        state: Arc<Mutex<ServerState>>,
    ) -> Result<Response<Body>, std::io::Error> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.uri().path().to_string());
        let bare_path = req.uri().path().to_string();
        let if_none_match = req
            .headers()
            .get(hyper::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);

        // Record and snapshot under the lock; never hold it across an await.
        let (delay, response) = {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.log.push(super::RecordedRequest {
                method: req.method().to_string(),
                path: path.clone(),
                headers: req
                    .headers()
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
            });
            if bare_path == JWKS_PATH {
                st.fetches += 1;
            }
            let response = if st.hang_up {
                None
            } else if !st.available {
                Some(simple(
                    StatusCode::SERVICE_UNAVAILABLE,
                    br#"{"error":"unavailable"}"#.to_vec(),
                ))
            } else if let Some((status, body)) = st.routes.get(&path) {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                Some(simple(status, body.clone()))
            } else if bare_path == JWKS_PATH {
                Some(jwks_response(&mut st, if_none_match.as_deref()))
            } else if bare_path == DISCOVERY_PATH {
                let doc = st.discovery_override.clone().unwrap_or_else(|| {
                    json!({
                        "issuer": format!("http://{addr}"),
                        "jwks_uri": format!("http://{addr}{JWKS_PATH}"),
                    })
                });
                Some(simple(
                    StatusCode::OK,
                    serde_json::to_vec(&doc).expect("JSON"),
                ))
            } else {
                Some(simple(StatusCode::OK, jwks_body(&st)))
            };
            (st.delay, response)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        response.ok_or_else(|| std::io::Error::other("hanging up on purpose"))
    }

    fn body(bytes: Vec<u8>, sized: bool) -> Body {
        Body {
            inner: Full::new(Bytes::from(bytes)),
            sized,
        }
    }

    fn simple(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
        let mut resp = Response::new(body(bytes, true));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }

    fn jwks_response(st: &mut ServerState, if_none_match: Option<&str>) -> Response<Body> {
        let tag = current_etag(st);
        let status = StatusCode::from_u16(st.status).unwrap_or(StatusCode::OK);
        let not_modified = status == StatusCode::OK
            && matches!((&tag, if_none_match), (Some(t), Some(inm)) if if_none_match_matches(inm, t));
        let mut resp = if not_modified {
            st.not_modified += 1;
            let mut r = Response::new(body(Vec::new(), true));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let mut r = simple(status, Vec::new());
            *r.body_mut() = body(jwks_body(st), st.content_length);
            r
        };
        let headers = resp.headers_mut();
        if let Some(tag) = tag {
            headers.insert(
                hyper::header::ETAG,
                HeaderValue::from_str(&tag).expect("ETag is ASCII"),
            );
        }
        if let Some(cc) = &st.cache_control {
            if let Ok(v) = HeaderValue::from_str(cc) {
                headers.insert(hyper::header::CACHE_CONTROL, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::jwks;
    use std::io::{Read as _, Write as _};

    fn http() -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    #[test]
    fn jwks_server_serves_counts_and_revalidates() {
        let key = TestKey::ec_p256().with_kid("k1");
        let server = JwksServer::serving(&[&key]);
        server.set_cache_control(Some("max-age=60".into()));
        let client = http();

        let resp = client.get(server.url()).send().unwrap();
        assert_eq!(resp.status(), 200);
        let etag = resp.headers()["etag"].to_str().unwrap().to_string();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "strong ETag: {etag}"
        );
        assert_eq!(resp.headers()["cache-control"], "max-age=60");
        assert_eq!(Some(etag.clone()), server.current_etag());
        let body: Value = resp.json().unwrap();
        assert_eq!(body, jwks(&[&key]));
        assert_eq!(server.fetch_count(), 1);

        let resp = client
            .get(server.url())
            .header("If-None-Match", &etag)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 304);
        assert_eq!(resp.headers()["etag"].to_str().unwrap(), etag);
        assert_eq!(server.fetch_count(), 2);
        assert_eq!(
            server.request_log()[1].header("if-none-match"),
            Some(etag.as_str())
        );

        // New keys: new ETag, so the old one no longer matches.
        let key2 = TestKey::ed25519();
        server.set_keys(vec![key.public_jwk(), key2.public_jwk()]);
        let resp = client
            .get(server.url())
            .header("If-None-Match", &etag)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_ne!(resp.headers()["etag"].to_str().unwrap(), etag);
        assert_eq!(
            resp.json::<Value>().unwrap()["keys"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(server.fetch_count(), 3);

        // Discovery points back at the server.
        let doc: Value = client
            .get(server.discovery_url())
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(doc["issuer"], server.issuer_url());
        assert_eq!(doc["jwks_uri"], server.url());
        assert_eq!(server.fetch_count(), 3, "discovery is not a JWKS fetch");
    }

    #[test]
    fn jwks_server_records_other_paths_and_failure_modes() {
        let key = TestKey::ec_p256();
        let server = JwksServer::serving(&[&key]);
        let client = http();

        assert!(!server.was_requested("/attacker/keys"));
        let resp = client
            .get(server.url_for("/attacker/keys?x=1"))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<Value>().unwrap(), jwks(&[&key]));
        assert!(server.was_requested("/attacker/keys"));
        assert_eq!(server.requests(), vec!["/attacker/keys?x=1".to_string()]);
        assert_eq!(server.fetch_count(), 0);

        server.set_route("/custom", Some((404, b"nope".to_vec())));
        let resp = client.get(server.url_for("/custom")).send().unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.text().unwrap(), "nope");

        server.set_body_override(Some(b"not json".to_vec()));
        assert_eq!(
            client
                .get(server.url())
                .send()
                .unwrap()
                .bytes()
                .unwrap()
                .as_ref(),
            b"not json"
        );
        server.set_body_override(None);

        server.set_available(false);
        assert_eq!(client.get(server.url()).send().unwrap().status(), 503);
        server.set_available(true);

        server.set_hang_up(true);
        assert!(client.get(server.url()).send().is_err());
        server.set_hang_up(false);

        server.set_delay(Duration::from_millis(300));
        let start = Instant::now();
        assert_eq!(client.get(server.url()).send().unwrap().status(), 200);
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(server.fetch_count(), 4);
        assert!(server.wait_for_fetches(4, Duration::from_millis(10)));

        server.clear_requests();
        assert_eq!(server.fetch_count(), 0);
        assert!(server.requests().is_empty());

        let port = server.port();
        drop(server);
        assert!(!crate::port_open(port), "server stops when dropped");
    }

    /// One HTTP/1.1 GET over a Unix socket; the whole answer as text.
    fn unix_get(path: &Path, target: &str, extra: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn jwks_server_status_fixed_etag_framing_and_unix_socket() {
        let key = TestKey::ec_p256().with_kid("k1");
        let mut server = JwksServer::serving(&[&key]);
        let client = http();

        // A fixed ETag: it changes while the keys stay, and 304s are counted.
        server.set_fixed_etag(Some("\"v1\"".into()));
        assert_eq!(server.current_etag().as_deref(), Some("\"v1\""));
        let resp = client
            .get(server.url())
            .header("If-None-Match", "\"v1\"")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 304);
        assert_eq!(resp.headers()["etag"], "\"v1\"");
        assert_eq!(server.not_modified_count(), 1);
        server.set_fixed_etag(Some("\"v2\"".into()));
        let resp = client
            .get(server.url())
            .header("If-None-Match", "\"v1\"")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["etag"], "\"v2\"");
        assert_eq!(resp.json::<Value>().unwrap(), jwks(&[&key]));
        server.set_fixed_etag(None);
        assert_eq!(
            server.current_etag(),
            Some(server::etag(&server.current_body()))
        );

        // Another status, with the usual body and headers; never a 304.
        server.set_status(500);
        let etag = server.current_etag().unwrap();
        let resp = client
            .get(server.url())
            .header("If-None-Match", &etag)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["etag"].to_str().unwrap(), etag);
        assert_eq!(resp.json::<Value>().unwrap(), jwks(&[&key]));
        server.set_status(200);
        assert_eq!(server.not_modified_count(), 1);

        // Without Content-Length the body is chunked.
        let resp = client.get(server.url()).send().unwrap();
        assert_eq!(
            resp.content_length(),
            Some(server.current_body().len() as u64)
        );
        server.set_content_length(false);
        let resp = client.get(server.url()).send().unwrap();
        assert!(resp.headers().get("content-length").is_none());
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        assert_eq!(resp.json::<Value>().unwrap(), jwks(&[&key]));
        server.set_content_length(true);
        assert_eq!(server.fetch_count(), 5);

        // The same state on a Unix socket.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("jwks.sock");
        server.serve_unix(&socket);
        let answer = unix_get(&socket, JWKS_PATH, "");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&String::from_utf8(server.current_body()).unwrap()));
        let etag = server.current_etag().unwrap();
        let answer = unix_get(&socket, JWKS_PATH, &format!("If-None-Match: {etag}\r\n"));
        assert!(answer.starts_with("HTTP/1.1 304"), "{answer}");
        assert_eq!((server.fetch_count(), server.not_modified_count()), (7, 2));
        server.clear_requests();
        assert_eq!(server.not_modified_count(), 0);

        drop(server);
        assert!(std::os::unix::net::UnixStream::connect(&socket).is_err());
    }
}
