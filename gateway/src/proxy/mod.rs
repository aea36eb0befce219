//! The Pingora `ProxyHttp` implementation: one small hook per phase. The request pipeline
//! (`request_filter`'s steps) is in `pipeline.rs`, the answers the gateway writes itself in
//! `answers.rs`, the `auth_request` endpoint in `verify_endpoint.rs`.
//!
//! Each request takes one snapshot of the live config in `new_ctx` and uses only that, so a
//! reload in the middle of a request can never mix two configs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

mod answers;
mod pipeline;
mod upstream_request;
mod verify_endpoint;

use pipeline::{CorsRequest, Head};

use crate::access_log::Entry;
use crate::auth::Identity;
use crate::forwarding::client::ClientInfo;
use crate::limits::conn;
use crate::limits::rules::{Held, Stage};
use crate::reload::LiveConfig;
use crate::routing::{Action, Route};
use crate::runtime::Generation;

/// The gateway's proxy logic.
pub struct Gateway {
    live: Arc<LiveConfig>,
}

impl Gateway {
    /// A proxy reading its config from `live`.
    pub fn new(live: Arc<LiveConfig>) -> Self {
        Gateway { live }
    }
}

/// Per-request state.
pub struct RequestCtx {
    config: Arc<Generation>,
    start: Instant,
    route: Option<Arc<Route>>,
    /// Kept as a header value: it is sent upstream and downstream, and a client-supplied id
    /// is shared with the request rather than copied.
    request_id: HeaderValue,
    client: Option<ClientInfo>,
    /// Normalised, rewritten path plus the original query.
    forward_uri: String,
    /// Client `Host` (with port) for `X-Forwarded-Host`.
    host: String,
    tried: Vec<usize>,
    backend: Option<usize>,
    upstream_start: Option<Instant>,
    body_bytes: u64,
    /// Status of a response the gateway wrote itself.
    status: u16,
    auth: &'static str,
    /// Why auth failed (metrics label), `-` otherwise.
    auth_reason: &'static str,
    identity: Option<Identity>,
    /// The request's `Origin`, when the route's CORS policy allows it.
    cors_origin: Option<HeaderValue>,
    counted: bool,
    /// Concurrency-limit slots this request holds until it ends.
    held: Held,
    /// The limit that refused the request, for the access log.
    limited: Option<String>,
    /// Socket of the upstream connection in use (to abort it on an over-limit body).
    upstream_fd: Option<i32>,
}

impl RequestCtx {
    /// The request id as text (empty before `request_filter` ran).
    fn request_id(&self) -> &str {
        // Always visible ASCII: a checked client value or our hex id.
        self.request_id.to_str().unwrap_or_default()
    }
}

/// The metrics label of common statuses without formatting one per request.
fn status_label(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        414 => "414",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => return None,
    })
}

/// Makes the kernel reset the connection when it is closed, instead of ending it in order.
fn abort_on_close(fd: i32) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the open upstream socket of this request (Pingora closes it only after
    // the request's hooks have run); setsockopt reads `linger` and nothing else.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "could not set SO_LINGER on the upstream socket: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn is_tls(session: &Session) -> bool {
    session
        .digest()
        .and_then(|d: &Digest| d.ssl_digest.as_ref())
        .is_some()
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            config: self.live.current(),
            start: Instant::now(),
            route: None,
            request_id: HeaderValue::from_static(""),
            client: None,
            forward_uri: String::new(),
            host: String::new(),
            tried: Vec::new(),
            backend: None,
            upstream_start: None,
            body_bytes: 0,
            status: 0,
            auth: "-",
            auth_reason: "-",
            identity: None,
            cors_origin: None,
            counted: false,
            held: Held::default(),
            limited: None,
            upstream_fd: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        conn::request_started(session, &ctx.config.limits);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Each step answers the request itself when it stops it (`None` / `false`).
        self.admit(session, ctx);
        let Some(Head { host, path }) = self.read_head(session, ctx).await? else {
            return Ok(true);
        };
        if ctx.config.auth.verify_path.as_deref() == Some(path.as_str()) {
            self.verify_endpoint(session, ctx, &host).await?;
            return Ok(true);
        }
        let cors = CorsRequest::of(session.req_header());
        let Some(route) = self.find_route(session, ctx, &host, &path, &cors).await? else {
            return Ok(true);
        };
        ctx.host = host;
        ctx.route = Some(route.clone());
        session.set_read_timeout(Some(route.client_body_timeout));
        let go_on = self
            .within_limits(session, ctx, &route, Stage::BeforeAuth)
            .await?
            && self.apply_cors(session, ctx, &route, cors).await?
            && self.check_declared_body(session, ctx, &route).await?
            && self.authenticate(session, ctx, &route).await?
            && self
                .within_limits(session, ctx, &route, Stage::AfterAuth)
                .await?;
        if !go_on {
            return Ok(true);
        }
        self.dispatch(session, ctx, &route, &path).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(b), Some(max)) = (
            body.as_ref(),
            ctx.route.as_ref().and_then(|r| r.max_body_size),
        ) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > max {
                // This chunk is not forwarded; the upstream must not keep a request that
                // looks complete up to here, so its connection is reset, never reused.
                if let Some(fd) = ctx.upstream_fd.take() {
                    abort_on_close(fd);
                }
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    format!("request body larger than {max} bytes"),
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(Action::Proxy(group)) = ctx.route.as_ref().map(|r| &r.action) else {
            return Error::e_explain(ErrorType::InternalError, "no upstream for this request");
        };
        let Some(idx) = group.select(&ctx.tried) else {
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("no healthy backend in upstream {}", group.name),
            );
        };
        ctx.tried.push(idx);
        ctx.backend = Some(idx);
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(group.backends[idx].peer.clone()))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_fd = Some(fd);
        if !reused {
            if let (Some(Action::Proxy(group)), Some(idx)) =
                (ctx.route.as_ref().map(|r| &r.action), ctx.backend)
            {
                group.report_success(idx);
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(Action::Proxy(group)), Some(idx)) =
            (ctx.route.as_ref().map(|r| &r.action), ctx.backend)
        {
            group.report_failure(idx);
            // Nothing was sent yet, so another backend may take the request safely.
            let attempts = ctx.tried.len() as u32;
            e.set_retry(attempts <= group.retries && attempts < group.backends.len() as u32);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no route");
        };
        let uri = http::Uri::try_from(ctx.forward_uri.as_str()).or_err(
            ErrorType::HTTPStatus(400),
            "request path cannot be forwarded",
        )?;
        upstream.set_uri(uri);

        upstream_request::set_host(upstream, &route, ctx)?;

        if let Some(client) = &ctx.client {
            upstream_request::set_forwarding(upstream, client, &ctx.host, session)?;
        }
        upstream.insert_header(ctx.config.request_id_wire.clone(), ctx.request_id.clone())?;
        upstream_request::set_identity(upstream, &route, ctx)?;
        if !route.request_headers.is_empty() {
            route.request_headers.apply_request(upstream)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(start), Some(Action::Proxy(group))) =
            (ctx.upstream_start, ctx.route.as_ref().map(|r| &r.action))
        {
            self.live
                .metrics
                .upstream_latency
                .with_label_values(&[group.name.as_str()])
                .observe(start.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.decorate_response(resp, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // `client_body_timeout`: the body stopped arriving.
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            // Fixed texts: error contexts name internal peers and must not reach clients.
            let description = match code {
                502 => "the upstream could not be reached or answered badly".to_string(),
                504 => "the upstream did not answer in time".to_string(),
                503 => "no healthy backend can take this request".to_string(),
                413 => match ctx.route.as_ref().and_then(|r| r.max_body_size) {
                    Some(max) => format!("request body larger than {max} bytes"),
                    None => "request body too large".to_string(),
                },
                400 => "malformed request".to_string(),
                408 => "the request body did not arrive in time".to_string(),
                _ => "the request could not be completed".to_string(),
            };
            if let Err(err) = self
                .respond_error(session, ctx, code, &description, &[])
                .await
            {
                tracing::debug!("could not send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        conn::request_finished(session);
        let metrics = &self.live.metrics;
        if ctx.counted {
            metrics.active_requests.dec();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(ctx.status);
        let route = ctx.route.as_ref().map(|r| r.name.as_str()).unwrap_or("-");
        let status_text;
        let status_label = match status_label(status) {
            Some(s) => s,
            None => {
                status_text = status.to_string();
                status_text.as_str()
            }
        };
        metrics
            .requests
            .with_label_values(&[route, status_label])
            .inc();
        let elapsed = ctx.start.elapsed();
        if ctx.route.is_some() {
            metrics
                .request_duration
                .with_label_values(&[route])
                .observe(elapsed.as_secs_f64());
        }
        let cfg = &ctx.config;
        if !cfg.access_log.enabled {
            return;
        }
        let req = session.req_header();
        let upstream = match (ctx.route.as_ref().map(|r| &r.action), ctx.backend) {
            (Some(Action::Proxy(g)), Some(i)) => g.backends[i].label.as_str(),
            _ => "-",
        };
        let header_str = |name: header::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        };
        let version = format!("{:?}", req.version);
        let uri = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let line = Entry {
            client: ctx
                .client
                .as_ref()
                .map(|c| c.client_ip.as_str())
                .unwrap_or("-"),
            method: req.method.as_str(),
            uri,
            version: &version,
            status,
            bytes: session.body_bytes_sent(),
            referer: header_str(header::REFERER),
            user_agent: header_str(header::USER_AGENT),
            route,
            upstream,
            duration: elapsed,
            request_id: if ctx.request_id.is_empty() {
                "-"
            } else {
                ctx.request_id()
            },
            auth: ctx.auth,
            auth_reason: ctx.auth_reason,
            subject: ctx
                .identity
                .as_ref()
                .and_then(|i| i.token.subject())
                .unwrap_or("-"),
            limit: ctx.limited.as_deref().unwrap_or("-"),
        }
        .render(cfg.access_log.format);
        if !self.live.access_log.write(line) {
            metrics.access_log_dropped.inc();
        }
    }
}
