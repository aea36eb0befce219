//! A strict, recording HTTP/1.1 upstream for the protocol-abuse suites.
//!
//! Unlike the demo upstream (hyper underneath), this one parses HTTP/1.1 itself and refuses
//! everything that two parsers could read differently, so a request the gateway forwards
//! with ambiguous framing shows up as [`Recorded::malformed`] instead of being silently
//! "fixed". Every request is recorded as soon as its head has arrived and updated while its
//! body arrives, so a test can see a body that was abandoned midway
//! ([`Recorded::aborted`]) as well as one that finished ([`Recorded::complete`]).
//!
//! Strictness: CRLF line endings only; `METHOD SP target SP HTTP/1.x`; header names are
//! tokens with the colon right after them; no obs-fold; no control characters (except
//! HTAB) in values; at most one `Content-Length` (digits only) and at most one
//! `Transfer-Encoding`, which must be exactly `chunked`, and never both; chunk sizes of at
//! most 15 hex digits. Anything else is recorded as malformed, answered `400` and the
//! connection closed.
//!
//! Each complete request is answered `200` with `Content-Length` and the body
//! `{"seen": n}` (n = how many requests the upstream has recorded so far), keep-alive
//! unless the request was HTTP/1.0 without `Connection: keep-alive` or asked to close.
//!
//! The client side of the same suites lives here too: [`exchange`] writes exact bytes to a
//! port and reads back every response (or the close) with a bounded wait.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest request head accepted (request line + headers).
const MAX_HEAD: usize = 1 << 20;
/// How long a connection may stay silent before the upstream gives up on it.
const IDLE: Duration = Duration::from_secs(30);

/// One request as the upstream saw it.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Connection it arrived on (1, 2, … in accept order).
    pub conn: usize,
    /// Position on that connection (0 = first request).
    pub seq: usize,
    /// Request method (empty when the request line was never read).
    pub method: String,
    /// Request target as sent.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body bytes received (decoded when chunked).
    pub body: Vec<u8>,
    /// The framing finished: the whole body (or none) arrived.
    pub complete: bool,
    /// The connection closed, failed or went silent before the request was complete.
    pub aborted: bool,
    /// Why the request was refused as ambiguous or invalid, if it was.
    pub malformed: Option<String>,
}

impl Recorded {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many fields named `name` the request carried.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

struct Shared {
    log: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    stop: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
}

/// The running server; stops when dropped.
pub struct RecordingUpstream {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl RecordingUpstream {
    /// Starts the server on a free port of 127.0.0.1.
    pub fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("recording upstream: bind");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            log: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("recording-upstream-{port}"))
            .spawn(move || accept_loop(listener, s))
            .expect("spawn the recording upstream");
        RecordingUpstream {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// Everything recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.log).clone()
    }

    /// Waits until at least `n` requests were recorded; returns whether they were.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        crate::wait_for(timeout, || lock(&self.shared.log).len() >= n)
    }

    /// Forgets what was recorded (connection numbering goes on).
    pub fn clear(&self) {
        lock(&self.shared.log).clear();
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// A readable listing of the recorded requests, for assertion messages.
    pub fn describe(&self) -> String {
        describe(&self.requests())
    }
}

/// A readable listing of `requests`, for assertion messages (long values shortened).
pub fn describe(requests: &[Recorded]) -> String {
    let mut out = String::new();
    for r in requests {
        let headers: Vec<String> = r
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", shorten(v)))
            .collect();
        out.push_str(&format!(
            "  conn {} #{}: {} {} {} [{}] body={}B complete={} aborted={} malformed={:?}\n",
            r.conn,
            r.seq,
            r.method,
            shorten(&r.target),
            r.version,
            headers.join(" | "),
            r.body.len(),
            r.complete,
            r.aborted,
            r.malformed
        ));
    }
    if out.is_empty() {
        out.push_str("  (nothing)\n");
    }
    out
}

/// `text` cut to 60 characters, with its length when cut.
fn shorten(text: &str) -> String {
    if text.chars().count() <= 60 {
        return text.to_string();
    }
    let head: String = text.chars().take(40).collect();
    format!("{head}…({} bytes)", text.len())
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Unblock accept() and every connection thread.
        let _ = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(500),
        );
        for s in lock(&self.shared.streams).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let conn = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.streams).push(clone);
        }
        let s = shared.clone();
        let _ = std::thread::Builder::new()
            .name(format!("recording-conn-{conn}"))
            .spawn(move || {
                Connection {
                    stream,
                    buf: Vec::new(),
                    shared: s,
                    conn,
                }
                .serve()
            });
    }
}

/// Why reading stopped.
enum Stop {
    /// Peer closed, reset, or stayed silent too long.
    Gone,
    /// Invalid or ambiguous input.
    Malformed(String),
}

struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    conn: usize,
}

impl Connection {
    fn serve(mut self) {
        let _ = self.stream.set_read_timeout(Some(IDLE));
        let _ = self.stream.set_write_timeout(Some(IDLE));
        let mut seq = 0;
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return;
            }
            match self.one_request(seq) {
                Ok(true) => seq += 1,
                Ok(false) | Err(_) => break,
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Reads more bytes into the buffer; `Err(Gone)` on EOF, error or timeout.
    fn fill(&mut self) -> Result<(), Stop> {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(Stop::Gone),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(_) => Err(Stop::Gone),
        }
    }

    /// Index of the record being filled (pushed when the head arrived).
    fn push(&self, rec: Recorded) -> usize {
        let mut log = lock(&self.shared.log);
        log.push(rec);
        log.len() - 1
    }

    /// Applies `f` to the record at `idx` (if `clear()` did not remove it meanwhile).
    fn update(&self, idx: usize, conn: usize, seq: usize, f: impl FnOnce(&mut Recorded)) {
        let mut log = lock(&self.shared.log);
        if let Some(r) = log.get_mut(idx).filter(|r| r.conn == conn && r.seq == seq) {
            f(r);
        } else if let Some(r) = log.iter_mut().find(|r| r.conn == conn && r.seq == seq) {
            f(r);
        }
    }

    /// Answers 400 (the reason in the body) before the connection is closed.
    fn refuse(&mut self, why: &str) {
        let _ = self.stream.write_all(
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}",
                why.len()
            )
            .as_bytes(),
        );
    }

    /// Serves one request; `Ok(true)` to go on with the next one on this connection.
    fn one_request(&mut self, seq: usize) -> Result<bool, ()> {
        // The head.
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            let bare_lf_end =
                find(&self.buf, b"\n\n").is_some() || find(&self.buf, b"\n\r\n").is_some();
            if self.buf.len() > MAX_HEAD || bare_lf_end {
                let why = if bare_lf_end {
                    "bare LF in the request head".to_string()
                } else {
                    format!("request head larger than {MAX_HEAD} bytes")
                };
                self.push(self.malformed_record(seq, why.clone()));
                self.refuse(&why);
                return Err(());
            }
            match self.fill() {
                Ok(()) => {}
                Err(_) => {
                    if !self.buf.is_empty() {
                        let mut rec = self.partial_record(seq);
                        rec.aborted = true;
                        self.push(rec);
                    }
                    return Err(());
                }
            }
        };
        let head: Vec<u8> = self.buf.drain(..head_end + 4).collect();
        let mut rec = match parse_head(&head[..head_end]) {
            Ok(rec) => rec,
            Err(why) => {
                let mut rec = self.partial_record_from(seq, &head);
                rec.malformed = Some(why.clone());
                self.push(rec);
                self.refuse(&why);
                return Err(());
            }
        };
        rec.conn = self.conn;
        rec.seq = seq;
        let framing = match framing(&rec) {
            Ok(f) => f,
            Err(why) => {
                rec.malformed = Some(why.clone());
                self.push(rec);
                self.refuse(&why);
                return Err(());
            }
        };
        let keep_alive = wants_keep_alive(&rec);
        let (conn, idx) = (self.conn, self.push(rec));

        // The body.
        let result = match framing {
            Framing::Length(n) => self.read_length(idx, seq, n),
            Framing::Chunked => self.read_chunked(idx, seq),
        };
        match result {
            Ok(()) => {}
            Err(Stop::Gone) => {
                self.update(idx, conn, seq, |r| r.aborted = true);
                return Err(());
            }
            Err(Stop::Malformed(why)) => {
                self.update(idx, conn, seq, |r| r.malformed = Some(why.clone()));
                self.refuse(&why);
                return Err(());
            }
        }
        let seen = {
            let mut log = lock(&self.shared.log);
            if let Some(r) = log.iter_mut().find(|r| r.conn == conn && r.seq == seq) {
                r.complete = true;
            }
            log.len()
        };
        let body = format!("{{\"seen\": {seen}}}");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if keep_alive { "" } else { "Connection: close\r\n" }
        );
        if self.stream.write_all(response.as_bytes()).is_err() {
            return Err(());
        }
        Ok(keep_alive)
    }

    fn malformed_record(&self, seq: usize, why: String) -> Recorded {
        let mut rec = self.partial_record(seq);
        rec.malformed = Some(why);
        rec
    }

    fn partial_record(&self, seq: usize) -> Recorded {
        self.partial_record_from(seq, &self.buf)
    }

    /// What can be said about an unfinished or invalid head: its first line as the target.
    fn partial_record_from(&self, seq: usize, bytes: &[u8]) -> Recorded {
        let line_end = find(bytes, b"\r\n").unwrap_or(bytes.len().min(200));
        let line = String::from_utf8_lossy(&bytes[..line_end]).to_string();
        let mut parts = line.splitn(3, ' ');
        Recorded {
            conn: self.conn,
            seq,
            method: parts.next().unwrap_or_default().to_string(),
            target: parts.next().unwrap_or_default().to_string(),
            version: parts.next().unwrap_or_default().to_string(),
            ..Recorded::default()
        }
    }

    fn read_length(&mut self, idx: usize, seq: usize, n: u64) -> Result<(), Stop> {
        let conn = self.conn;
        let mut left = n;
        while left > 0 {
            if self.buf.is_empty() {
                self.fill()?;
            }
            let take = (self.buf.len() as u64).min(left) as usize;
            let part: Vec<u8> = self.buf.drain(..take).collect();
            left -= take as u64;
            self.update(idx, conn, seq, |r| r.body.extend_from_slice(&part));
        }
        Ok(())
    }

    /// Reads one CRLF-terminated line (without the CRLF) of at most `max` bytes.
    fn line(&mut self, max: usize) -> Result<Vec<u8>, Stop> {
        loop {
            if let Some(p) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).take(p).collect();
                if line.contains(&b'\n') || line.contains(&b'\r') {
                    return Err(Stop::Malformed("bare CR or LF in a chunk line".into()));
                }
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(Stop::Malformed("chunk line too long".into()));
            }
            if self.buf.contains(&b'\n') {
                return Err(Stop::Malformed("bare LF in a chunk line".into()));
            }
            self.fill()?;
        }
    }

    fn read_chunked(&mut self, idx: usize, seq: usize) -> Result<(), Stop> {
        loop {
            let line = self.line(4096)?;
            let (size_text, ext) = match line.iter().position(|&b| b == b';') {
                Some(p) => (&line[..p], Some(&line[p + 1..])),
                None => (&line[..], None),
            };
            if size_text.is_empty()
                || size_text.len() > 15
                || !size_text.iter().all(u8::is_ascii_hexdigit)
            {
                return Err(Stop::Malformed(format!(
                    "invalid chunk size {:?}",
                    String::from_utf8_lossy(size_text)
                )));
            }
            if let Some(ext) = ext {
                if ext.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
                    return Err(Stop::Malformed(
                        "control character in a chunk extension".into(),
                    ));
                }
            }
            let size = u64::from_str_radix(std::str::from_utf8(size_text).unwrap_or("0"), 16)
                .map_err(|_| Stop::Malformed("chunk size overflow".into()))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let t = self.line(8192)?;
                    if t.is_empty() {
                        return Ok(());
                    }
                    if t.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                        return Err(Stop::Malformed("obs-fold in the trailers".into()));
                    }
                }
            }
            self.read_length(idx, seq, size)?;
            while self.buf.len() < 2 {
                self.fill()?;
            }
            if &self.buf[..2] != b"\r\n" {
                return Err(Stop::Malformed("chunk data not followed by CRLF".into()));
            }
            self.buf.drain(..2);
        }
    }
}

enum Framing {
    Length(u64),
    Chunked,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses the head (without the final CRLFCRLF) strictly.
fn parse_head(head: &[u8]) -> Result<Recorded, String> {
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Err("bare LF in the request head".into());
        }
        if b == b'\r' && head.get(i + 1) != Some(&b'\n') {
            return Err("bare CR in the request head".into());
        }
        if b == 0 {
            return Err("NUL byte in the request head".into());
        }
    }
    let text = std::str::from_utf8(head).map_err(|_| "non-UTF-8 request head".to_string())?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(format!("bad request line {request_line:?}"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(format!("bad method {method:?}"));
    }
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("bad target {target:?}"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("bad version {version:?}"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            return Err("obs-fold continuation line".into());
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line without a colon: {line:?}"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(format!("bad header name {name:?}"));
        }
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(format!("control character in header {name}"));
        }
        headers.push((
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    Ok(Recorded {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        ..Recorded::default()
    })
}

/// The body framing of a parsed head; ambiguity is an error.
fn framing(rec: &Recorded) -> Result<Framing, String> {
    let te: Vec<&str> = values(rec, "transfer-encoding");
    let cl: Vec<&str> = values(rec, "content-length");
    if !te.is_empty() && !cl.is_empty() {
        return Err("both Transfer-Encoding and Content-Length".into());
    }
    match te[..] {
        [] => {}
        ["chunked"] => return Ok(Framing::Chunked),
        _ => return Err(format!("unsupported Transfer-Encoding {te:?}")),
    }
    match cl[..] {
        [] => Ok(Framing::Length(0)),
        [v] if !v.is_empty() && v.len() <= 15 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(
            Framing::Length(v.parse().map_err(|_| "bad Content-Length")?),
        ),
        _ => Err(format!("invalid Content-Length {cl:?}")),
    }
}

fn values<'a>(rec: &'a Recorded, name: &str) -> Vec<&'a str> {
    rec.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn wants_keep_alive(rec: &Recorded) -> bool {
    let connection = values(rec, "connection")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    if connection.iter().any(|t| t == "close") {
        return false;
    }
    rec.version == "HTTP/1.1" || connection.iter().any(|t| t == "keep-alive")
}

/// Reads from `stream` until the peer closes, an error occurs or `timeout` passes; returns
/// the bytes and whether the peer closed (EOF or reset) as opposed to the time running out.
pub fn read_until_close(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, false)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (out, true),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client side: raw exchanges with the gateway
// ---------------------------------------------------------------------------------------------

/// One response read back from the gateway by [`exchange`].
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Header fields, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Resp {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What came back on one connection.
pub struct Exchange {
    /// Complete responses, in order.
    pub responses: Vec<Resp>,
    /// The peer closed the connection (EOF or reset) within the wait.
    pub closed: bool,
    /// Every byte read.
    pub raw: Vec<u8>,
    /// How long after the write the reading stopped.
    pub elapsed: Duration,
}

impl Exchange {
    /// The statuses of the responses.
    pub fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }

    /// What was read, as text (cut after 1500 characters), for assertion messages.
    pub fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.raw);
        let mut out: String = t.chars().take(1500).collect();
        if out.len() < t.len() {
            out.push('…');
        }
        out
    }
}

/// Parses as many complete responses as `buf` holds; a response without length that runs to
/// the end of `buf` counts when `eof`.
pub fn parse_responses(mut buf: &[u8], eof: bool) -> Vec<Resp> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let mut lines = head.split("\r\n");
        let Some(status) = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            break;
        };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let rest = &buf[end + 4..];
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (body, used) = if (100..200).contains(&status) || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            match dechunk(rest) {
                Some(x) => x,
                None => break,
            }
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if rest.len() < n {
                break;
            }
            (rest[..n].to_vec(), n)
        } else if eof {
            (rest.to_vec(), rest.len())
        } else {
            break;
        };
        out.push(Resp {
            status,
            headers,
            body,
        });
        buf = &rest[used..];
    }
    out
}

fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        let eol = b[pos..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&b[pos..pos + eol]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        pos += eol + 2;
        if size == 0 {
            let end = b[pos..].windows(2).position(|w| w == b"\r\n")?;
            return Some((out, pos + end + 2));
        }
        if b.len() < pos + size + 2 {
            return None;
        }
        out.extend_from_slice(&b[pos..pos + size]);
        pos += size + 2;
    }
}

/// Writes `bytes` on a new connection to 127.0.0.1:`port` and reads until the peer closes
/// it, or `expect` responses arrived and nothing more came for 400 ms, or 6 s passed.
pub fn exchange(port: u16, bytes: &[u8], expect: usize) -> Exchange {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    // The peer may answer and close before it has read everything: that is fine.
    let _ = s.write_all(bytes);
    read_responses(&mut s, expect)
}

/// Reads from `s` until the peer closes it, or `expect` responses arrived and nothing more
/// came for 400 ms, or 6 s passed.
pub fn read_responses(s: &mut TcpStream, expect: usize) -> Exchange {
    let start = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut closed = false;
    loop {
        let have = parse_responses(&raw, false).len();
        let wait = if have >= expect {
            Duration::from_millis(400)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        if wait.is_zero() {
            break;
        }
        s.set_read_timeout(Some(wait)).ok();
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Exchange {
        responses: parse_responses(&raw, closed),
        closed,
        raw,
        elapsed: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(port: u16, bytes: &[u8]) -> (String, bool) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(bytes).expect("write");
        let (out, closed) = read_until_close(&mut s, Duration::from_millis(800));
        (String::from_utf8_lossy(&out).to_string(), closed)
    }

    #[test]
    fn records_keep_alive_requests_with_both_framings() {
        let up = RecordingUpstream::start();
        let (text, closed) = exchange(
            up.port,
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nde\r\n1\r\nf\r\n0\r\nT: 1\r\n\r\n",
        );
        assert!(!closed, "keep-alive connection closed: {text}");
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        assert!(text.contains("{\"seen\": 2}"), "{text}");
        let r = up.requests();
        assert_eq!(r.len(), 2, "{}", describe(&r));
        assert_eq!((r[0].target.as_str(), &r[0].body[..]), ("/a", &b"abc"[..]));
        assert_eq!((r[1].target.as_str(), &r[1].body[..]), ("/b", &b"def"[..]));
        assert!(r.iter().all(|r| r.complete && !r.aborted && r.conn == 1));
        assert_eq!((r[0].seq, r[1].seq), (0, 1));
        assert_eq!(up.connections(), 1);
    }

    #[test]
    fn refuses_ambiguous_framing() {
        let up = RecordingUpstream::start();
        let cases: [&[u8]; 8] = [
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
        ];
        for case in cases {
            let (text, closed) = exchange(up.port, case);
            assert!(text.starts_with("HTTP/1.1 400"), "{text}");
            assert!(closed);
        }
        let r = up.requests();
        assert_eq!(r.len(), cases.len(), "{}", describe(&r));
        assert!(r.iter().all(|r| r.malformed.is_some() && !r.complete));
    }

    #[test]
    fn an_abandoned_body_is_recorded_as_aborted() {
        let up = RecordingUpstream::start();
        let mut s = TcpStream::connect(("127.0.0.1", up.port)).expect("connect");
        s.write_all(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            .expect("write");
        assert!(up.wait_for_count(1, Duration::from_secs(2)));
        assert!(crate::wait_for(Duration::from_secs(2), || up.requests()[0]
            .body
            .len()
            == 3));
        drop(s);
        assert!(crate::wait_for(Duration::from_secs(2), || up.requests()[0].aborted));
        let r = &up.requests()[0];
        assert!(!r.complete && r.malformed.is_none(), "{r:?}");
    }
}
