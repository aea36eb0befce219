//! A small real SMTP server on loopback for the email tests: greeting, EHLO/HELO with
//! capabilities (`AUTH PLAIN LOGIN`, and `STARTTLS` with a self-signed rcgen certificate when
//! asked), AUTH PLAIN / LOGIN checked against configured credentials, MAIL FROM, RCPT TO,
//! DATA with dot-unstuffing, RSET, NOOP, QUIT. It records every accepted message (envelope
//! and raw data) and can be told to refuse (a 4xx/5xx at MAIL FROM or at DATA).
//!
//! ```text
//! let sink = SmtpSink::start(SinkOptions::default());
//! // … configure the issuer with host 127.0.0.1, port sink.port(), tls: none …
//! let mail = sink.wait_for_message(|m| m.rcpt_to == ["a@example.com"], Duration::from_secs(10));
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// How the sink behaves.
#[derive(Clone, Debug, Default)]
pub struct SinkOptions {
    /// Credentials the client must authenticate with before MAIL FROM (`None`: no AUTH needed,
    /// but AUTH is still offered and recorded).
    pub credentials: Option<(String, String)>,
    /// Offer STARTTLS with a fresh self-signed certificate for 127.0.0.1 / localhost.
    pub starttls: bool,
    /// Speak TLS from the first byte (SMTPS) with such a certificate; STARTTLS is then not
    /// offered.
    pub implicit_tls: bool,
}

/// Where to refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refuse {
    /// Accept everything.
    Nothing,
    /// Answer MAIL FROM with this code (e.g. 451).
    MailFrom(u16),
    /// Answer DATA with this code (e.g. 554).
    Data(u16),
}

/// One accepted message.
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    /// The MAIL FROM address (without angle brackets).
    pub mail_from: String,
    /// The RCPT TO addresses.
    pub rcpt_to: Vec<String>,
    /// The message as received after dot-unstuffing (CRLF line ends).
    pub data: String,
    /// The user name of a successful AUTH on this connection.
    pub auth_user: Option<String>,
    /// Whether the connection was encrypted (after STARTTLS).
    pub tls: bool,
}

impl ReceivedMail {
    /// The value of header `name` (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let mut out: Option<String> = None;
        let mut in_it = false;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if in_it {
                    if let Some(v) = out.as_mut() {
                        v.push_str(line);
                    }
                }
                continue;
            }
            if out.is_some() {
                break;
            }
            in_it = false;
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case(name) {
                    out = Some(v.trim().to_string());
                    in_it = true;
                }
            }
        }
        out
    }

    /// The body (after the blank line).
    pub fn body(&self) -> String {
        self.data
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    /// The token of the first link in the body: the value after `token=` up to the end of the
    /// base64url alphabet.
    pub fn link_token(&self) -> Option<String> {
        let body = self.body();
        let at = body.find("token=")? + "token=".len();
        let token: String = body[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        (!token.is_empty()).then_some(token)
    }
}

#[derive(Default)]
struct State {
    messages: Vec<ReceivedMail>,
    auth_failures: usize,
    connections: usize,
    refuse: Option<Refuse>,
}

/// A running sink; stops when dropped.
pub struct SmtpSink {
    port: u16,
    state: Arc<Mutex<State>>,
    ca_file: Option<PathBuf>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Shared {
    opts: SinkOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<Mutex<State>>,
}

impl SmtpSink {
    /// Starts a sink on a free loopback port.
    pub fn start(opts: SinkOptions) -> SmtpSink {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tls, ca_file) = if opts.starttls || opts.implicit_tls {
            let (acceptor, pem) = tls_acceptor();
            let path = dir.path().join("smtp-ca.pem");
            std::fs::write(&path, pem).expect("write CA");
            (Some(acceptor), Some(path))
        } else {
            (None, None)
        };
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::new(Shared {
            opts,
            tls,
            state: state.clone(),
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let shared = shared.clone();
                            tokio::spawn(async move {
                                // Bounded: a stuck client cannot keep a task forever.
                                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                                    match (&shared.tls, shared.opts.implicit_tls) {
                                        (Some(acceptor), true) => {
                                            if let Ok(s) = acceptor.accept(stream).await {
                                                let _ = session(Box::new(s), true, shared.clone()).await;
                                            }
                                        }
                                        _ => {
                                            let _ = session(Box::new(stream), false, shared.clone()).await;
                                        }
                                    }
                                })
                                .await;
                            });
                        }
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        SmtpSink {
            port,
            state,
            ca_file,
            shutdown: Some(tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM file of its certificate (with `starttls`), to trust as the relay's CA.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Every accepted message so far.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.state
            .lock()
            .map(|s| s.messages.clone())
            .unwrap_or_default()
    }

    /// Failed AUTH attempts so far.
    pub fn auth_failures(&self) -> usize {
        self.state.lock().map(|s| s.auth_failures).unwrap_or(0)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().map(|s| s.connections).unwrap_or(0)
    }

    /// Sets where to refuse from now on.
    pub fn set_refuse(&self, refuse: Refuse) {
        if let Ok(mut s) = self.state.lock() {
            s.refuse = Some(refuse);
        }
    }

    /// Waits (polling) up to `timeout` for a message matching `pred`; panics otherwise.
    #[track_caller]
    pub fn wait_for_message(
        &self,
        pred: impl Fn(&ReceivedMail) -> bool,
        timeout: Duration,
    ) -> ReceivedMail {
        let end = Instant::now() + timeout;
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| pred(m)) {
                return m;
            }
            if Instant::now() > end {
                panic!(
                    "no matching message within {timeout:?}; received: {:#?}",
                    self.messages()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Messages to `rcpt` so far.
    pub fn messages_to(&self, rcpt: &str) -> Vec<ReceivedMail> {
        self.messages()
            .into_iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(rcpt)))
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TLS acceptor with a fresh self-signed certificate, and the certificate's PEM.
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    let pem = c.cert.pem();
    let cert = c.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        c.key_pair.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server cert");
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), pem)
}

fn addr_arg(arg: &str) -> String {
    // `FROM:<a@b> SIZE=1` → `a@b`.
    let rest = arg.split_once(':').map(|(_, r)| r).unwrap_or(arg).trim();
    match (rest.find('<'), rest.find('>')) {
        (Some(a), Some(b)) if a < b => rest[a + 1..b].to_string(),
        _ => rest.split_whitespace().next().unwrap_or("").to_string(),
    }
}

fn b64(s: &str) -> Option<String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

async fn session(stream: Box<dyn Io>, encrypted: bool, shared: Arc<Shared>) -> std::io::Result<()> {
    if let Ok(mut s) = shared.state.lock() {
        s.connections += 1;
    }
    let mut conn = BufReader::new(stream);
    let mut tls = encrypted;
    let mut authed: Option<String> = None;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    conn.get_mut()
        .write_all(b"220 sink.test ESMTP portcullis test sink\r\n")
        .await?;
    loop {
        let Some(line) = read_line(&mut conn).await? else {
            return Ok(());
        };
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        let reply: String = match verb.as_str() {
            "EHLO" => {
                let mut caps = vec!["sink.test greets you", "8BITMIME", "AUTH PLAIN LOGIN"];
                if shared.tls.is_some() && !tls {
                    caps.push("STARTTLS");
                }
                caps.push("SIZE 10485760");
                let n = caps.len();
                caps.iter()
                    .enumerate()
                    .map(|(i, c)| format!("250{}{c}\r\n", if i + 1 == n { ' ' } else { '-' }))
                    .collect()
            }
            "HELO" => "250 sink.test\r\n".into(),
            "STARTTLS" => match (&shared.tls, tls) {
                (Some(acceptor), false) => {
                    conn.get_mut()
                        .write_all(b"220 2.0.0 ready for TLS\r\n")
                        .await?;
                    let inner = conn.into_inner();
                    let stream = acceptor.accept(inner).await?;
                    conn = BufReader::new(Box::new(stream) as Box<dyn Io>);
                    tls = true;
                    // RFC 3207: everything learnt before TLS is forgotten.
                    authed = None;
                    from = None;
                    rcpts.clear();
                    continue;
                }
                _ => "502 5.5.1 STARTTLS not available\r\n".into(),
            },
            "AUTH" => {
                let mut parts = arg.split_whitespace();
                let mech = parts.next().unwrap_or("").to_ascii_uppercase();
                let initial = parts.next().map(str::to_string);
                let creds = match mech.as_str() {
                    "PLAIN" => {
                        let resp = match initial {
                            Some(r) => Some(r),
                            None => {
                                conn.get_mut().write_all(b"334 \r\n").await?;
                                read_line(&mut conn).await?
                            }
                        };
                        resp.and_then(|r| b64(&r)).and_then(|s| {
                            let mut f = s.split('\0');
                            let _authz = f.next()?;
                            Some((f.next()?.to_string(), f.next()?.to_string()))
                        })
                    }
                    "LOGIN" => {
                        conn.get_mut().write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                        let user = read_line(&mut conn).await?.and_then(|l| b64(&l));
                        conn.get_mut().write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                        let pass = read_line(&mut conn).await?.and_then(|l| b64(&l));
                        user.zip(pass)
                    }
                    _ => None,
                };
                let ok = match (&shared.opts.credentials, &creds) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some((u, p)), Some((cu, cp))) => u == cu && p == cp,
                };
                if ok {
                    authed = creds.map(|(u, _)| u);
                    "235 2.7.0 authenticated\r\n".into()
                } else {
                    if let Ok(mut s) = shared.state.lock() {
                        s.auth_failures += 1;
                    }
                    "535 5.7.8 authentication failed\r\n".into()
                }
            }
            "MAIL" => {
                let refuse = shared.state.lock().ok().and_then(|s| s.refuse);
                if shared.opts.credentials.is_some() && authed.is_none() {
                    "530 5.7.0 authentication required\r\n".into()
                } else if let Some(Refuse::MailFrom(code)) = refuse {
                    format!("{code} refused by test sink\r\n")
                } else {
                    from = Some(addr_arg(&arg));
                    rcpts.clear();
                    "250 2.1.0 ok\r\n".into()
                }
            }
            "RCPT" => {
                if from.is_none() {
                    "503 5.5.1 MAIL first\r\n".into()
                } else {
                    rcpts.push(addr_arg(&arg));
                    "250 2.1.5 ok\r\n".into()
                }
            }
            "DATA" => {
                let refuse = shared.state.lock().ok().and_then(|s| s.refuse);
                if from.is_none() || rcpts.is_empty() {
                    "503 5.5.1 MAIL and RCPT first\r\n".into()
                } else if let Some(Refuse::Data(code)) = refuse {
                    format!("{code} refused by test sink\r\n")
                } else {
                    conn.get_mut()
                        .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let mut data = String::new();
                    loop {
                        let Some(l) = read_line(&mut conn).await? else {
                            return Ok(());
                        };
                        if l == "." {
                            break;
                        }
                        // Dot-unstuffing (RFC 5321 §4.5.2).
                        data.push_str(l.strip_prefix('.').unwrap_or(&l));
                        data.push_str("\r\n");
                    }
                    if let Ok(mut s) = shared.state.lock() {
                        s.messages.push(ReceivedMail {
                            mail_from: from.take().unwrap_or_default(),
                            rcpt_to: std::mem::take(&mut rcpts),
                            data,
                            auth_user: authed.clone(),
                            tls,
                        });
                    }
                    "250 2.0.0 queued\r\n".into()
                }
            }
            "RSET" => {
                from = None;
                rcpts.clear();
                "250 2.0.0 ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 ok\r\n".into(),
            "QUIT" => {
                conn.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 command not recognised\r\n".into(),
        };
        conn.get_mut().write_all(reply.as_bytes()).await?;
        conn.get_mut().flush().await?;
    }
}

/// One line without its CRLF; `None` at end of stream. Lines are capped at 64 KiB.
async fn read_line(conn: &mut BufReader<Box<dyn Io>>) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = conn.read_until(b'\n', &mut buf).await?;
    if n == 0 || buf.len() > 65_536 {
        return Ok(None);
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_addr_and_headers() {
        assert_eq!(addr_arg("FROM:<a@b.c> SIZE=12"), "a@b.c");
        assert_eq!(addr_arg("TO:<x@y.z>"), "x@y.z");
        assert_eq!(addr_arg("FROM:<>"), "");
        let m = ReceivedMail {
            mail_from: String::new(),
            rcpt_to: Vec::new(),
            data: "Subject: a\r\n b\r\nTo: x\r\n\r\nhi https://h/p?token=abc_-9.\r\n".into(),
            auth_user: None,
            tls: false,
        };
        assert_eq!(m.header("subject").as_deref(), Some("a b"));
        assert_eq!(m.header("to").as_deref(), Some("x"));
        assert_eq!(m.link_token().as_deref(), Some("abc_-9"));
    }
}
