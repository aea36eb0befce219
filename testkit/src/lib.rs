//! The test kit shared by the workspace's tests — the gateway's and the issuer's unit tests
//! and the end-to-end suites of `portcullis-tests`:
//!
//! * [`postgres`]: a throwaway PostgreSQL cluster per test process, a fresh database per test;
//! * [`jwt`]: test keys of every supported kind and token minting;
//! * [`jwks`]: a JWKS / OpenID discovery server on loopback (or a Unix socket);
//! * [`fake_twilio`], [`smtp_sink`], [`recording_upstream`]: fake servers that record what
//!   they were sent and fail on demand;
//! * a few loopback helpers ([`free_port`], [`port_open`], [`wait_for`]) and the accept loop
//!   the fake HTTP servers share ([`spawn_server_thread`], [`serve_http1`]).
//!
//! It depends on neither the gateway nor the issuer, so both can use it as a dev-dependency.

pub mod fake_twilio;
pub mod jwks;
pub mod jwt;
pub mod postgres;
pub mod recording_upstream;
pub mod smtp_sink;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1, taken from 20000–32767: below the kernel's
/// ephemeral range (32768–60999 by default), so that no outgoing connection can take it as its
/// source port between this check and the server binding it. Ports from `bind(:0)` come from
/// that range, and one was taken that way in a CI run ("Address already in use"). Each call
/// moves on to the next port (a process-wide counter, starting at a point drawn from the
/// process id), so tests running in parallel do not share one.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 32_768 - LOW;
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cond()
}

/// Whether something accepts TCP connections on the port.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a fake server on a thread of its own with a single-threaded tokio runtime: `serve`
/// builds the server's future on that thread. Dropping the runtime when the future ends
/// cancels the connection tasks and closes their sockets.
pub fn spawn_server_thread<F, Fut>(name: String, serve: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{name}: tokio runtime: {e}"));
            rt.block_on(serve());
        })
        .expect("spawn a fake server's thread")
}

/// What a fake server's handler answers.
pub type FakeResponse<B = http_body_util::Full<hyper::body::Bytes>> =
    Result<hyper::Response<B>, std::io::Error>;

/// A listener the fake servers accept on: TCP or a Unix socket (both std, non-blocking).
pub enum FakeListener {
    /// TCP, normally on 127.0.0.1.
    Tcp(std::net::TcpListener),
    /// A Unix socket.
    Unix(std::os::unix::net::UnixListener),
}

impl From<std::net::TcpListener> for FakeListener {
    fn from(l: std::net::TcpListener) -> Self {
        FakeListener::Tcp(l)
    }
}

impl From<std::os::unix::net::UnixListener> for FakeListener {
    fn from(l: std::os::unix::net::UnixListener) -> Self {
        FakeListener::Unix(l)
    }
}

/// An accepted connection of either kind.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

enum TokioListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl TokioListener {
    async fn accept(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            TokioListener::Tcp(l) => Box::new(l.accept().await?.0),
            TokioListener::Unix(l) => Box::new(l.accept().await?.0),
        })
    }
}

/// Serves HTTP/1.1 on `listener` (a std TCP or Unix listener), each request answered by
/// `handle`, until `stop` fires: the accept loop of the fake servers (run it with
/// [`spawn_server_thread`]).
pub async fn serve_http1<H, Fut, B>(
    listener: impl Into<FakeListener>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    handle: H,
) where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = FakeResponse<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = match listener.into() {
        FakeListener::Tcp(l) => {
            TokioListener::Tcp(tokio::net::TcpListener::from_std(l).expect("tokio listener"))
        }
        FakeListener::Unix(l) => {
            TokioListener::Unix(tokio::net::UnixListener::from_std(l).expect("tokio listener"))
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok(stream) = accepted else { continue };
                let handle = handle.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(handle);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}
