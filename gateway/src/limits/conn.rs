//! The connection guard: connection cap, request-head bounds and head/idle deadlines,
//! enforced on the raw connection before Pingora's HTTP/1 reader sees a byte.
//!
//! Pingora 0.9 reads a request head into a buffer that may grow to 1 MiB and times reads
//! one at a time (and not at all between keep-alive requests), so neither the memory a
//! client can pin nor the time it can hold a connection is bounded. [`EdgeApp`] wraps every
//! accepted stream in a [`GuardedStream`] that counts head bytes as they arrive, holds at
//! most `max_head_size` of a head, hands Pingora only complete heads, answers 414/431/408
//! itself, and closes idle keep-alive connections. The proxy tells the guard when a request is over
//! ([`request_finished`]), which re-arms it for the next head.

use std::fmt;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::{HttpProxy, Session};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::head::{HeadScanner, Scan, TIMEOUT_RESPONSE};
use super::EdgeLimits;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::reload::LiveConfig;

/// The proxy service's application: Pingora's HTTP proxy behind the connection guard.
pub struct EdgeApp {
    proxy: Arc<HttpProxy<Gateway>>,
    live: Arc<LiveConfig>,
    open: Arc<AtomicUsize>,
}

impl EdgeApp {
    /// Guards every connection of `proxy` with the limits in force when it is accepted.
    pub fn new(proxy: HttpProxy<Gateway>, live: Arc<LiveConfig>) -> Self {
        EdgeApp {
            proxy: Arc::new(proxy),
            live,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = self.live.current().limits.clone();
        let metrics = self.live.metrics.clone();
        let Some(slot) = Slot::take(&self.open, limits.max_connections, &metrics) else {
            // Over the cap: close at once, before any byte is read (like nginx past
            // `worker_connections`, but counted).
            metrics.connections_refused.inc();
            drop(stream);
            return None;
        };
        // HTTP/2 has its own framing and limits (h2 settings); only HTTP/1 heads are scanned.
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let guarded = GuardedStream::new(stream, limits, metrics, slot, h2);
        ServerApp::process_new(&self.proxy, Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.proxy).await
    }
}

/// One counted connection; dropping it frees the slot.
struct Slot {
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize, metrics: &Arc<Metrics>) -> Option<Slot> {
        if open.fetch_add(1, Ordering::AcqRel) >= max {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics.connections_open.inc();
        Some(Slot {
            open: open.clone(),
            metrics: metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections_open.dec();
    }
}

/// Where the connection is in its request cycle.
#[derive(Debug)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head(HeadScanner),
    /// A complete head the guard holds, handed to Pingora from this offset.
    Release { from: usize },
    /// The head was handed over: body, response, tunnel or HTTP/2 frames pass untouched.
    Passthrough,
    /// Writing a refusal before closing.
    Refusing {
        answer: &'static [u8],
        written: usize,
    },
    /// Reads end here.
    Closed,
}

/// A downstream stream with the guard in front of its reads.
pub struct GuardedStream {
    inner: Stream,
    limits: Arc<EdgeLimits>,
    metrics: Arc<Metrics>,
    phase: Phase,
    /// When the head being waited for must have arrived (or the idle connection closes).
    deadline: Pin<Box<Sleep>>,
    /// The deadline in force; the timer is moved to it only before waiting.
    deadline_at: Instant,
    /// Set by the proxy when a request is over: the next read starts a new head.
    rearm: AtomicBool,
    /// Requests started on this connection.
    requests: AtomicU32,
    /// A head that arrived in pieces, until it is complete.
    pending: Vec<u8>,
    _slot: Slot,
}

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl GuardedStream {
    fn new(
        inner: Stream,
        limits: Arc<EdgeLimits>,
        metrics: Arc<Metrics>,
        slot: Slot,
        h2: bool,
    ) -> Self {
        let phase = if h2 {
            Phase::Passthrough
        } else {
            Phase::Head(HeadScanner::new(limits.head))
        };
        // nginx times the first head from the accept, like this.
        let deadline_at = Instant::now() + limits.client_header_timeout;
        let deadline = Box::pin(tokio::time::sleep_until(deadline_at));
        GuardedStream {
            inner,
            limits,
            metrics,
            phase,
            deadline,
            deadline_at,
            rearm: AtomicBool::new(false),
            requests: AtomicU32::new(0),
            pending: Vec::new(),
            _slot: slot,
        }
    }

    /// Starts waiting for the next head of a kept-alive connection.
    fn start_idle(&mut self) {
        self.phase = Phase::Head(HeadScanner::new(self.limits.head));
        self.deadline_at = Instant::now() + self.limits.keepalive_timeout;
    }

    /// Arms the timer for `deadline_at` (only when about to wait: resetting a tokio timer
    /// takes the driver's lock) and reports whether it has passed.
    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline.deadline() != self.deadline_at {
            let at = self.deadline_at;
            self.deadline.as_mut().reset(at);
        }
        self.deadline.as_mut().poll(cx).is_ready()
    }

    fn refuse(&mut self, answer: &'static [u8], reason: &'static str) {
        self.metrics
            .requests_refused
            .with_label_values(&[reason])
            .inc();
        self.phase = Phase::Refusing { answer, written: 0 };
        // A client that does not read its answer cannot hold the connection either.
        self.deadline_at = Instant::now() + REFUSAL_LINGER;
    }

    /// Reads a head through the scanner. Pingora gets the head only once it is complete, so
    /// a refused or abandoned head ends as a quiet end-of-stream for Pingora (nothing read),
    /// and the bytes held for it are the guard's own, bounded by `max_head_size`.
    fn poll_head(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let Phase::Head(scanner) = &self.phase else {
                return Poll::Ready(Ok(()));
            };
            let seen = scanner.seen();
            // Never read more than the head may still hold, plus one byte to see it overflow.
            let room = self.limits.head.max_head_size.saturating_sub(seen) + 1;
            let before = buf.filled().len();
            let read = if room >= buf.remaining() {
                // The usual case: read straight into Pingora's buffer; taken back below if the
                // head is not complete yet.
                Pin::new(&mut self.inner).poll_read(cx, buf)
            } else {
                // Close to the limit: read through a bounded buffer (uninitialised, so nothing
                // is zeroed on the request path).
                let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut part = ReadBuf::uninit(&mut chunk[..room.min(READ_CHUNK)]);
                let read = Pin::new(&mut self.inner).poll_read(cx, &mut part);
                buf.put_slice(part.filled());
                read
            };
            match read {
                Poll::Ready(result) => result?,
                // The deadline is only looked at when there is nothing to read: bytes that
                // keep arriving are read, and the first wait after the deadline ends it.
                Poll::Pending if self.deadline_passed(cx) => {
                    if seen == 0 {
                        // Idle keep-alive (or a connection that never spoke): close quietly.
                        self.phase = Phase::Closed;
                    } else {
                        self.refuse(TIMEOUT_RESPONSE, "header_timeout");
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
            if buf.filled().len() == before {
                // The client left (mid-head or between requests).
                self.phase = Phase::Closed;
                return Poll::Ready(Ok(()));
            }
            let Phase::Head(scanner) = &mut self.phase else {
                return Poll::Ready(Ok(()));
            };
            let got = &buf.filled()[before..];
            let scan = scanner.feed(got);
            if seen == 0 && scan == Scan::Incomplete && self.requests.load(Ordering::Relaxed) > 0 {
                // The first byte of a kept-alive head starts its `client_header_timeout`.
                self.deadline_at = Instant::now() + self.limits.client_header_timeout;
            }
            match scan {
                Scan::Complete(_) if self.pending.is_empty() => {
                    // The whole head arrived at once: it stays where it is.
                    self.phase = Phase::Passthrough;
                    return Poll::Ready(Ok(()));
                }
                Scan::Complete(_) => {
                    self.pending.extend_from_slice(got);
                    buf.set_filled(before);
                    self.phase = Phase::Release { from: 0 };
                    return Poll::Ready(Ok(()));
                }
                Scan::Incomplete => {
                    if self.pending.is_empty() {
                        // One allocation for the whole head: no copies as it grows, and pages
                        // are only touched (counted in RSS) as bytes arrive.
                        let whole = self.limits.head.max_head_size + 1;
                        self.pending.reserve_exact(whole);
                    }
                    self.pending.extend_from_slice(got);
                    // Pingora sees nothing of a head until it is complete.
                    buf.set_filled(before);
                }
                Scan::Refused(e) => {
                    self.pending.clear();
                    buf.set_filled(before);
                    self.refuse(e.response(), e.reason());
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// Hands a complete head held by the guard to Pingora, as much as its buffer takes.
    fn release(&mut self, buf: &mut ReadBuf<'_>) {
        let Phase::Release { from } = &mut self.phase else {
            return;
        };
        let n = buf.remaining().min(self.pending.len() - *from);
        buf.put_slice(&self.pending[*from..*from + n]);
        *from += n;
        if *from == self.pending.len() {
            self.pending.clear();
            // Keep a small buffer for the next slow head; give back what a large one took.
            self.pending.shrink_to(KEPT_HEAD_BUFFER);
            self.phase = Phase::Passthrough;
        }
    }

    /// Writes the refusal, then reports end of stream.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.deadline_passed(cx) {
            self.phase = Phase::Closed;
        }
        while let Phase::Refusing { answer, written } = &mut self.phase {
            if *written == answer.len() {
                // Best effort: the connection closes either way.
                let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
                self.phase = Phase::Closed;
                break;
            }
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*written..])) {
                Ok(0) | Err(_) => self.phase = Phase::Closed,
                Ok(n) => *written += n,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Largest single read while in a head (the stack buffer the scanner reads through).
const READ_CHUNK: usize = 16 << 10;

/// How long a refusal may take to write before the connection is dropped.
const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Capacity a connection keeps for heads that arrive in pieces.
const KEPT_HEAD_BUFFER: usize = 4 << 10;

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.phase {
                Phase::Passthrough => {
                    if this.rearm.swap(false, Ordering::AcqRel) {
                        this.start_idle();
                        continue;
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                Phase::Head(_) => {
                    let filled = buf.filled().len();
                    ready!(this.poll_head(cx, buf))?;
                    // A refusal or a complete head held back switched phase without data.
                    if buf.filled().len() == filled
                        && matches!(this.phase, Phase::Refusing { .. } | Phase::Release { .. })
                    {
                        continue;
                    }
                    return Poll::Ready(Ok(()));
                }
                Phase::Release { .. } => {
                    this.release(buf);
                    return Poll::Ready(Ok(()));
                }
                Phase::Refusing { .. } => ready!(this.poll_refuse(cx))?,
                Phase::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

fn guard(session: &Session) -> Option<&GuardedStream> {
    session
        .stream()
        .and_then(|s| (**s).as_any().downcast_ref::<GuardedStream>())
}

/// Per-request connection settings, applied when a request head has been read: the body
/// read timeout, `keepalive_requests` and `keepalive_timeout: 0`.
pub(crate) fn request_started(session: &mut Session, limits: &EdgeLimits) {
    let count = guard(session).map(|g| g.requests.fetch_add(1, Ordering::Relaxed) + 1);
    let last =
        count.is_some_and(|n| limits.keepalive_requests > 0 && n >= limits.keepalive_requests);
    if last || limits.keepalive_timeout.is_zero() {
        session.set_keepalive(None);
    }
}

/// Tells the guard that the request is over, so the connection's next bytes are a new head.
/// A request whose body was not read to the end closes its connection instead: those bytes
/// must never be taken for a head, and reading them is work for a client we refused.
pub(crate) fn request_finished(session: &mut Session) {
    // A no-op on HTTP/2, whose streams end on their own.
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    if let Some(g) = guard(session) {
        g.rearm.store(true, Ordering::Release);
    }
}
