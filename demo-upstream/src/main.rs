//! Demo upstream for Portcullis: answers every request with a JSON echo of
//! what it received, so `make run` has something to proxy to and end-to-end
//! tests can assert on exactly what the proxy forwarded.
//!
//! Test knobs (request headers): `X-Demo-Delay-Ms` delays the answer,
//! `X-Demo-Status` picks the status code. `/healthz` reports 503 while the
//! `--unhealthy-file` exists.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{ArgGroup, Parser};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// Requests with larger bodies get 413 instead of being buffered.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Upper bound for `X-Demo-Delay-Ms`, so a typo cannot wedge a test run.
const MAX_DELAY_MS: u64 = 30_000;
const BIN: &str = "portcullis-demo-upstream";

/// Command-line options.
#[derive(Parser, Debug)]
#[command(name = BIN, version, about = "Demo upstream that echoes every request as JSON")]
#[command(group(
    ArgGroup::new("listeners")
        .args(["listen", "unix", "tls_listen"])
        .required(true)
        .multiple(true)
))]
struct Cli {
    /// Plain HTTP listener (HTTP/1.1 and h2c), e.g. 127.0.0.1:9000. Repeatable.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,

    /// Unix domain socket listener; a stale socket file is removed first. Repeatable.
    #[arg(long, value_name = "PATH")]
    unix: Vec<PathBuf>,

    /// HTTPS listener (ALPN h2 and http/1.1); needs --tls-cert and --tls-key. Repeatable.
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Vec<SocketAddr>,

    /// PEM certificate chain for --tls-listen.
    #[arg(long, value_name = "PEM", requires = "tls_listen")]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-listen.
    #[arg(long, value_name = "PEM", requires = "tls_listen")]
    tls_key: Option<PathBuf>,

    /// Name reported as "server" in every answer and in the X-Demo-Server header.
    #[arg(long, default_value = "demo")]
    name: String,

    /// While this file exists, /healthz answers 503.
    #[arg(long, value_name = "PATH")]
    unhealthy_file: Option<PathBuf>,
}

/// State shared by every connection.
struct App {
    name: String,
    name_header: HeaderValue,
    unhealthy_file: Option<PathBuf>,
}

/// Which listener a connection arrived on; echoed as "listener".
#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Tls,
    Unix,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Unix => "unix",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let Ok(name_header) = HeaderValue::from_str(&cli.name) else {
        // Same exit code as clap's own usage errors.
        eprintln!("{BIN}: --name must be a valid HTTP header value");
        return ExitCode::from(2);
    };
    let app = Arc::new(App {
        name: cli.name.clone(),
        name_header,
        unhealthy_file: cli.unhealthy_file.clone(),
    });
    // Print the error chain ourselves: anyhow's Termination impl would dump a
    // full backtrace whenever RUST_BACKTRACE is set, burying the one line
    // that matters (e.g. "address already in use").
    match run(&cli, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{BIN}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli, app: Arc<App>) -> anyhow::Result<()> {
    // Install signal handlers before binding so a signal sent right after the
    // "listening" line cannot hit the default (non-zero exit) disposition.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    // Bind everything before announcing anything: a test that waits for the
    // ready lines must never see a half-started server.
    let mut ready = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for addr in &cli.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        ready.push(format!("http://{}", listener.local_addr()?));
        tasks.spawn(serve_tcp(listener, None, app.clone()));
    }
    if !cli.tls_listen.is_empty() {
        let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) else {
            anyhow::bail!("--tls-listen needs --tls-cert and --tls-key");
        };
        let acceptor = tls_acceptor(cert, key)?;
        for addr in &cli.tls_listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            ready.push(format!("https://{}", listener.local_addr()?));
            tasks.spawn(serve_tcp(listener, Some(acceptor.clone()), app.clone()));
        }
    }
    for path in &cli.unix {
        remove_stale_socket(path)?;
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        ready.push(format!("unix:{}", path.display()));
        tasks.spawn(serve_unix(listener, app.clone()));
    }
    for what in &ready {
        eprintln!("{BIN} {} listening on {what}", app.name);
    }

    tokio::select! {
        _ = sigterm.recv() => eprintln!("{BIN} {}: SIGTERM, exiting", app.name),
        _ = sigint.recv() => eprintln!("{BIN} {}: SIGINT, exiting", app.name),
        // Accept loops only end by panicking; don't keep running half-deaf.
        Some(res) = tasks.join_next() => anyhow::bail!("listener task ended: {res:?}"),
    }
    // In-flight requests are simply dropped: callers that stop the demo
    // upstream want it gone now, not after a 30 s X-Demo-Delay-Ms.
    for path in &cli.unix {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("opening {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("reading certificates from {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key = rustls_pemfile::private_key(&mut io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("opening {}", key.display()))?,
    ))
    .with_context(|| format!("reading private key from {}", key.display()))?
    .with_context(|| format!("no private key in {}", key.display()))?;
    // Explicit provider: relying on the process default would panic if
    // workspace feature unification ever enables a second rustls backend.
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Deletes a leftover socket from a previous run, but refuses to delete
/// anything that is not a socket (a typo must not eat a regular file).
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display())),
        Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
}

async fn serve_tcp(listener: TcpListener, tls: Option<TlsAcceptor>, app: Arc<App>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                accept_failed(&app, e).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        match &tls {
            None => {
                tokio::spawn(serve_conn(stream, Kind::Tcp, peer.to_string(), app));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                // Handshake inside the task so a slow client can't stall accept().
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls) => serve_conn(tls, Kind::Tls, peer.to_string(), app).await,
                        Err(e) => eprintln!("{BIN} {}: TLS handshake with {peer}: {e}", app.name),
                    }
                });
            }
        }
    }
}

async fn serve_unix(listener: UnixListener, app: Arc<App>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_conn(stream, Kind::Unix, "unix".into(), app.clone()));
            }
            Err(e) => accept_failed(&app, e).await,
        }
    }
}

async fn accept_failed(app: &App, e: io::Error) {
    eprintln!("{BIN} {}: accept: {e}", app.name);
    // Errors such as EMFILE repeat immediately; back off instead of spinning.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn serve_conn<S>(stream: S, kind: Kind, peer: String, app: Arc<App>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let name = app.name.clone();
    let service = service_fn(move |req| {
        let app = app.clone();
        async move {
            let is_head = req.method() == Method::HEAD;
            let mut resp = handle(req, kind, &app).await;
            // hyper's h2 server would send the body even for HEAD, which
            // clients reject as a protocol error; send just the length.
            if is_head {
                if let Some(data) = resp.body_mut().data.take() {
                    resp.headers_mut()
                        .insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
                }
            }
            Ok::<_, Infallible>(resp)
        }
    });
    // The auto builder sniffs the h2 preface, which covers h2c on plain
    // listeners and ALPN-negotiated h2 on TLS alike.
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        eprintln!(
            "{BIN} {name}: {} connection from {peer}: {e}",
            kind.as_str()
        );
    }
}

async fn handle(req: Request<Incoming>, kind: Kind, app: &App) -> Response<JsonBody> {
    if req.uri().path() == "/healthz" {
        let unhealthy = match &app.unhealthy_file {
            Some(path) => tokio::fs::try_exists(path).await.unwrap_or(false),
            None => false,
        };
        let (status, word) = if unhealthy {
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        } else {
            (StatusCode::OK, "ok")
        };
        return reply(app, status, &json!({"status": word, "server": app.name}));
    }

    let (parts, mut body) = req.into_parts();
    let body_bytes = match count_body(&mut body).await {
        Ok(n) => n,
        Err((status, error)) => {
            eprintln!("{BIN} {}: {error}", app.name);
            let mut resp = reply(app, status, &json!({"server": app.name, "error": error}));
            resp.body_mut().unread = Some(body);
            return resp;
        }
    };

    let knob =
        |name: &str| -> Option<u64> { parts.headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    if let Some(ms) = knob("x-demo-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
    }
    // 1xx cannot be a final response (hyper would turn it into a 500), so
    // only 200..=999 are honoured; anything else falls back to 200.
    let status = knob("x-demo-status")
        .filter(|code| (200..=999).contains(code))
        .and_then(|code| StatusCode::from_u16(u16::try_from(code).ok()?).ok())
        .unwrap_or(StatusCode::OK);

    let mut headers = Map::new();
    let mut header_list = Vec::new();
    // HeaderMap groups repeated names together (first-seen order of names,
    // then each name's values in arrival order); hyper offers no way to get
    // the raw interleaving on the server side.
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str())
            .and_modify(|joined| {
                if let Value::String(s) = joined {
                    s.push_str(", ");
                    s.push_str(&value);
                }
            })
            .or_insert_with(|| Value::String(value.clone()));
        header_list.push(json!([name.as_str(), value]));
    }

    let echo = json!({
        "server": app.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        // h2 carries the host in :authority, which is not a header.
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "header_list": header_list,
        "body_bytes": body_bytes,
        "listener": kind.as_str(),
    });
    reply(app, status, &echo)
}

/// Counts the body without buffering it; the echo only reports its size.
async fn count_body(body: &mut Incoming) -> Result<usize, (StatusCode, String)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    };
    // A declared oversize body is refused before reading any of it.
    if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return Err(too_large());
    }
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("reading request body: {e}"),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            total += data.len();
            if total > MAX_BODY_BYTES {
                return Err(too_large());
            }
        }
    }
    Ok(total)
}

fn reply(app: &App, status: StatusCode, body: &Value) -> Response<JsonBody> {
    let mut body = body.to_string();
    body.push('\n');
    let mut resp = Response::new(JsonBody {
        data: Some(Bytes::from(body)),
        unread: None,
    });
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-demo-server", app.name_header.clone());
    resp
}

/// A one-chunk response body that can also own the unread rest of the
/// request body.
///
/// Dropping an unfinished h2 request body before the response is sent makes
/// h2 reset the stream with CANCEL, so the client never sees an early 413.
/// Keeping it alive until the response is complete yields the RFC 9113
/// §8.1 behaviour instead: full response, then RST_STREAM(NO_ERROR).
struct JsonBody {
    data: Option<Bytes>,
    unread: Option<Incoming>,
}

impl Body for JsonBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
