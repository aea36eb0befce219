//! The Pingora `ProxyHttp` implementation: one small hook per phase.
//!
//! Each request takes one snapshot of the live config in `new_ctx` and uses only that, so a
//! reload in the middle of a request can never mix two configs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use serde_json::json;

use crate::access_log::Entry;
use crate::auth::policy::RoutePolicy;
use crate::auth::sources;
use crate::auth::{self, Identity, Outcome};
use crate::headers::{acceptable_request_id, new_request_id, ClientInfo};
use crate::limits::conn;
use crate::limits::rules::{self, Held, Refusal, Stage};
use crate::path;
use crate::reload::LiveConfig;
use crate::routes::{Action, AuthMode, HostHeader, Route, RouteMatch};
use crate::runtime::Generation;
use crate::upstream::BackendAddress;

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

/// Builds a JSON error body in the shape the issuer also uses.
fn error_body(code: &str, description: &str, request_id: &str) -> Bytes {
    Bytes::from(
        json!({"error": code, "error_description": description, "request_id": request_id})
            .to_string(),
    )
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

fn status_error_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        429 => "rate_limited",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ if status >= 500 => "internal_error",
        _ => "error",
    }
}

impl Gateway {
    /// Runs authentication for the route; answers rejections itself. Returns whether the
    /// request may continue.
    async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
    ) -> Result<bool> {
        let cfg = ctx.config.clone();
        let outcome = auth::authenticate(
            session.req_header(),
            route.auth,
            &route.policy,
            &cfg.verifier,
            &*self.live.metrics,
        )
        .await;
        let metrics = &self.live.metrics;
        match outcome {
            Outcome::Public => ctx.auth = "public",
            Outcome::Anonymous => ctx.auth = "anonymous",
            Outcome::Allowed(identity) => {
                ctx.auth = "ok";
                ctx.identity = Some(identity);
            }
            Outcome::Rejected(r) => {
                ctx.auth = "denied";
                ctx.auth_reason = r.reason;
                metrics.auth.with_label_values(&["denied", r.reason]).inc();
                if let Some(location) = login_redirect(session.req_header(), route, &r) {
                    self.respond(
                        session,
                        ctx,
                        302,
                        "text/plain",
                        Bytes::new(),
                        &[(header::LOCATION, location)],
                    )
                    .await?;
                    return Ok(false);
                }
                self.respond_rejection(session, ctx, &r).await?;
                return Ok(false);
            }
        }
        metrics.auth.with_label_values(&[ctx.auth, "-"]).inc();
        Ok(true)
    }

    /// Counts the request against the route's limits of `stage`; answers 429 itself when one
    /// refuses. Returns whether the request may continue.
    async fn within_limits(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        stage: Stage,
    ) -> Result<bool> {
        if route.limits.is_empty() {
            return Ok(true);
        }
        let req = rules::Request {
            client_ip: ctx.client.as_ref().map(|c| c.client_ip.as_str()),
            headers: &session.req_header().headers,
            identity: ctx.identity.as_ref(),
        };
        let refused = rules::check(
            &route.limits,
            stage,
            &ctx.config.limit_state,
            &req,
            &mut ctx.held,
        );
        let Err(r) = refused else {
            return Ok(true);
        };
        self.live
            .metrics
            .rate_limited
            .with_label_values(&[route.name.as_str(), r.name.as_str()])
            .inc();
        self.respond_limited(session, ctx, r).await?;
        Ok(false)
    }

    /// 429 with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields.
    async fn respond_limited(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        r: Refusal,
    ) -> Result<()> {
        let extra = [
            (header::RETRY_AFTER, HeaderValue::from(r.retry_after)),
            (
                header::HeaderName::from_static("ratelimit-policy"),
                r.policy,
            ),
            (header::HeaderName::from_static("ratelimit"), r.status),
        ];
        let description = format!("rate limit {:?} exceeded; retry later", r.name);
        ctx.limited = Some(r.name);
        self.respond_error(session, ctx, 429, &description, &extra)
            .await
    }

    /// `auth_request` compatibility: answers 200 with the identity headers, or 401/403.
    /// The policy is that of the route `X-Original-URI` (and `X-Original-Method`,
    /// `X-Original-Host`) would match; without those headers, any trusted token passes.
    async fn verify_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        host: &str,
    ) -> Result<()> {
        let cfg = ctx.config.clone();
        let req = session.req_header();
        let text = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        let default_policy = RoutePolicy::default();
        let (mode, policy) = match text("x-original-uri") {
            None => (AuthMode::Required, &default_policy),
            Some(uri) => {
                let path = uri.split('?').next().unwrap_or(uri);
                let method = text("x-original-method")
                    .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                    .unwrap_or(Method::GET);
                let orig_host =
                    strip_port(text("x-original-host").unwrap_or(host)).to_ascii_lowercase();
                let route = path::normalize(path).ok().and_then(|p| {
                    match cfg.router.lookup(&orig_host, &p, &method) {
                        RouteMatch::Found(r) => Some(r.clone()),
                        _ => None,
                    }
                });
                match route {
                    Some(r) => {
                        ctx.route = Some(r);
                        let r = ctx.route.as_ref().map(|r| (r.auth, &r.policy));
                        match r {
                            Some((mode, policy)) => (mode, policy),
                            None => (AuthMode::Required, &default_policy),
                        }
                    }
                    None => {
                        ctx.auth = "denied";
                        ctx.auth_reason = "no_route";
                        self.respond_error(
                            session,
                            ctx,
                            403,
                            "no route matches the original request",
                            &[],
                        )
                        .await?;
                        return Ok(());
                    }
                }
            }
        };
        let policy = policy.clone();
        let outcome = auth::authenticate(
            session.req_header(),
            mode,
            &policy,
            &cfg.verifier,
            &*self.live.metrics,
        )
        .await;
        // The verify answer must not carry a route's response-header edits.
        ctx.route = None;
        match outcome {
            Outcome::Rejected(r) => {
                ctx.auth = "denied";
                ctx.auth_reason = r.reason;
                self.live
                    .metrics
                    .auth
                    .with_label_values(&["denied", r.reason])
                    .inc();
                self.respond_rejection(session, ctx, &r).await
            }
            other => {
                let mut extra: Vec<(header::HeaderName, HeaderValue)> = Vec::new();
                ctx.auth = match other {
                    Outcome::Allowed(identity) => {
                        extra.extend(
                            identity
                                .headers(&cfg.identity_names)
                                .map(|(n, v)| (n.clone(), v.clone())),
                        );
                        "ok"
                    }
                    Outcome::Public => "public",
                    _ => "anonymous",
                };
                self.live
                    .metrics
                    .auth
                    .with_label_values(&[ctx.auth, "-"])
                    .inc();
                self.respond(
                    session,
                    ctx,
                    200,
                    "application/json",
                    Bytes::from_static(b"{\"status\":\"ok\"}"),
                    &extra,
                )
                .await
            }
        }
    }

    /// Answers a rejection per RFC 6750: challenge (except for 400) and JSON body.
    async fn respond_rejection(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        r: &auth::Rejection,
    ) -> Result<()> {
        let extra = if r.status == 400 {
            Vec::new()
        } else {
            vec![(
                header::WWW_AUTHENTICATE,
                r.www_authenticate(&ctx.config.auth.realm),
            )]
        };
        let body = error_body(
            r.error.unwrap_or("unauthorized"),
            r.description,
            ctx.request_id(),
        );
        self.respond(session, ctx, r.status, "application/json", body, &extra)
            .await
    }

    /// Writes a complete response the gateway produced itself.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        content_type: &str,
        body: Bytes,
        extra: &[(header::HeaderName, HeaderValue)],
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
        if !body.is_empty() || status != 204 {
            resp.insert_header(header::CONTENT_TYPE, content_type)?;
        }
        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        for (n, v) in extra {
            resp.insert_header(n.clone(), v.clone())?;
        }
        self.decorate_response(&mut resp, ctx)?;
        ctx.status = status;
        let head_only = session.req_header().method == Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only || body.is_empty())
            .await?;
        if !head_only && !body.is_empty() {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }

    async fn respond_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        description: &str,
        extra: &[(header::HeaderName, HeaderValue)],
    ) -> Result<()> {
        let body = error_body(status_error_code(status), description, ctx.request_id());
        self.respond(session, ctx, status, "application/json", body, extra)
            .await
    }

    /// Headers every response gets: the request id and the route's response edits.
    fn decorate_response(&self, resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
        if !ctx.request_id.is_empty() {
            resp.insert_header(ctx.config.request_id_wire.clone(), ctx.request_id.clone())?;
        }
        if let Some(route) = &ctx.route {
            if let (Some(cors), Some(origin)) = (&route.cors, &ctx.cors_origin) {
                for (n, v) in cors.response_headers(origin) {
                    resp.insert_header(n, v)?;
                }
            }
            if !route.response_headers.is_empty() {
                route.response_headers.apply_response(resp)?;
            }
        }
        Ok(())
    }
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

/// Where to send a browser that failed authentication, if the route has a login page.
fn login_redirect(req: &RequestHeader, route: &Route, r: &auth::Rejection) -> Option<HeaderValue> {
    let template = route.policy.login_redirect.as_ref()?;
    let wants_html = req
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if r.status != 401 || !wants_html {
        return None;
    }
    let original = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut encoded = String::with_capacity(original.len() * 2);
    for b in original.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&template.replace("{uri}", &encoded)).ok()
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

/// Lower-case host without port, from the URI authority (HTTP/2, absolute-form) or `Host`.
fn request_host(req: &RequestHeader) -> Result<String, &'static str> {
    let raw = match req.uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => match req.headers.get(header::HOST) {
            Some(h) => h.to_str().map_err(|_| "invalid Host header")?.to_string(),
            None => String::new(),
        },
    };
    if req.headers.get_all(header::HOST).iter().count() > 1 {
        return Err("more than one Host header");
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without a host is refused.
    if raw.is_empty() && req.version == http::Version::HTTP_11 {
        return Err("missing Host header");
    }
    Ok(raw)
}

/// RFC 9112 §6.3: repeated `Content-Length` values (`5, 5`, or two fields) must be refused or
/// collapsed before forwarding; Pingora forwards them as sent, and an upstream that reads them
/// differently would see a second, smuggled request in the body. We refuse them.
fn repeated_content_length(req: &RequestHeader) -> bool {
    let mut values = req.headers.get_all(header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.as_bytes().contains(&b','),
        (Some(_), Some(_)) => true,
        _ => false,
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
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
        let metrics = &self.live.metrics;
        metrics.active_requests.inc();
        ctx.counted = true;
        let cfg = ctx.config.clone();

        // Identity headers belong to the gateway alone: drop what the client sent, first.
        cfg.identity_prefix.strip(session.req_header_mut());

        let req = session.req_header();
        let xff = req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let client = ClientInfo::resolve(peer_ip(session), &cfg.trust, xff);
        ctx.request_id = match req.headers.get(&cfg.request_id_header) {
            Some(v) if client.trusted && acceptable_request_id(v.as_bytes()) => v.clone(),
            _ => HeaderValue::from_maybe_shared(Bytes::from(new_request_id()))
                .unwrap_or(HeaderValue::from_static("")),
        };
        ctx.client = Some(client);

        let host = match request_host(req) {
            Ok(_) if repeated_content_length(req) => {
                let why = "more than one Content-Length value";
                self.respond_error(session, ctx, 400, why, &[]).await?;
                return Ok(true);
            }
            Ok(h) => h,
            Err(why) => {
                self.respond_error(session, ctx, 400, why, &[]).await?;
                return Ok(true);
            }
        };
        let normalised = match path::normalize(req.uri.path()) {
            Ok(p) => p,
            Err(e) => {
                self.respond_error(session, ctx, 400, &e.to_string(), &[])
                    .await?;
                return Ok(true);
            }
        };
        if cfg.auth.verify_path.as_deref() == Some(normalised.as_str()) {
            self.verify_endpoint(session, ctx, &host).await?;
            return Ok(true);
        }
        let origin = req.headers.get(header::ORIGIN).cloned();
        // A CORS preflight is routed as the request it announces.
        let preflight_method = match (&req.method, &origin) {
            (&Method::OPTIONS, Some(_)) => req
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok()),
            _ => None,
        };
        let method = preflight_method
            .clone()
            .unwrap_or_else(|| req.method.clone());
        let lookup_host = strip_port(&host).to_ascii_lowercase();
        let route = match cfg.router.lookup(&lookup_host, &normalised, &method) {
            RouteMatch::Found(r) => r.clone(),
            RouteMatch::MethodNotAllowed(allowed) => {
                let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                let allow =
                    HeaderValue::from_str(&list.join(", ")).unwrap_or(HeaderValue::from_static(""));
                self.respond_error(
                    session,
                    ctx,
                    405,
                    "method not allowed on this route",
                    &[(header::ALLOW, allow)],
                )
                .await?;
                return Ok(true);
            }
            RouteMatch::NotFound => {
                self.respond_error(session, ctx, 404, "no route matches this request", &[])
                    .await?;
                return Ok(true);
            }
        };
        ctx.host = host;
        ctx.route = Some(route.clone());
        session.set_read_timeout(Some(route.client_body_timeout));
        if !self
            .within_limits(session, ctx, &route, Stage::BeforeAuth)
            .await?
        {
            return Ok(true);
        }

        if let (Some(cors), Some(origin)) = (&route.cors, &origin) {
            let allowed = origin.to_str().is_ok_and(|o| cors.allows_origin(o));
            if let Some(requested) = &preflight_method {
                // Browsers send no credentials on a preflight: answer it here, tokenless.
                let asked = session
                    .req_header()
                    .headers
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .and_then(|v| v.to_str().ok());
                match allowed
                    .then(|| cors.preflight(origin, requested, asked))
                    .flatten()
                {
                    Some(headers) => {
                        ctx.auth = "preflight";
                        self.respond(session, ctx, 204, "text/plain", Bytes::new(), &headers)
                            .await?;
                    }
                    None => {
                        self.respond_error(
                            session,
                            ctx,
                            403,
                            "CORS preflight not allowed for this origin, method or headers",
                            &[],
                        )
                        .await?;
                    }
                }
                return Ok(true);
            }
            if allowed {
                ctx.cors_origin = Some(origin.clone());
            }
        }

        if let Some(max) = route.max_body_size {
            let declared = session
                .req_header()
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                self.respond_error(
                    session,
                    ctx,
                    413,
                    &format!("request body larger than {max} bytes"),
                    &[],
                )
                .await?;
                return Ok(true);
            }
        }

        match self.authenticate(session, ctx, &route).await? {
            true => {}
            false => return Ok(true),
        }
        if !self
            .within_limits(session, ctx, &route, Stage::AfterAuth)
            .await?
        {
            return Ok(true);
        }

        match &route.action {
            Action::Respond(fixed) => {
                let extra: Vec<_> = fixed
                    .location
                    .iter()
                    .map(|l| (header::LOCATION, l.clone()))
                    .collect();
                self.respond(
                    session,
                    ctx,
                    fixed.status,
                    "text/plain; charset=utf-8",
                    fixed.body.clone(),
                    &extra,
                )
                .await?;
                Ok(true)
            }
            Action::Proxy(_) => {
                let mut uri = route.rewrite.apply(&normalised);
                if let Some(q) = session.req_header().uri.query() {
                    // A token sent as a query parameter never travels further.
                    let kept = match &route.policy.sources.query {
                        Some(name) if route.auth != AuthMode::Public => {
                            sources::strip_query_param(q, name)
                        }
                        _ => q.to_string(),
                    };
                    // An empty query stays as sent (`?`); one emptied by the strip goes.
                    if !kept.is_empty() || q.is_empty() {
                        let q = kept;
                        uri.push('?');
                        uri.push_str(&q);
                    }
                }
                ctx.forward_uri = uri;
                Ok(false)
            }
        }
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

        match &route.host_header {
            HostHeader::Preserve => {
                if !upstream.headers.contains_key(header::HOST) && !ctx.host.is_empty() {
                    upstream.insert_header(header::HOST, ctx.host.as_str())?;
                }
            }
            HostHeader::Fixed(v) => upstream.insert_header(header::HOST, v.clone())?,
            HostHeader::Upstream => {
                if let (Action::Proxy(group), Some(idx)) = (&route.action, ctx.backend) {
                    let value = match &group.backends[idx].address {
                        BackendAddress::Tcp(a) => a.to_string(),
                        BackendAddress::Tls { addr, host } => format!("{host}:{}", addr.port()),
                        BackendAddress::Unix(_) => "localhost".to_string(),
                    };
                    upstream.insert_header(header::HOST, value)?;
                }
            }
        }

        if let Some(client) = &ctx.client {
            let xff = client.forwarded_for(
                upstream
                    .headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok()),
            );
            upstream.insert_header("x-forwarded-for", xff)?;
            upstream.insert_header("x-real-ip", client.client_ip.as_str())?;
            let proto_in = upstream.headers.get("x-forwarded-proto").cloned();
            match proto_in {
                Some(p) if client.trusted => upstream.insert_header("x-forwarded-proto", p)?,
                _ => upstream.insert_header(
                    "x-forwarded-proto",
                    if is_tls(session) { "https" } else { "http" },
                )?,
            }
            let host_in = upstream.headers.get("x-forwarded-host").cloned();
            match host_in {
                Some(h) if client.trusted => upstream.insert_header("x-forwarded-host", h)?,
                _ if !ctx.host.is_empty() => {
                    upstream.insert_header("x-forwarded-host", ctx.host.as_str())?
                }
                _ => {
                    upstream.remove_header("x-forwarded-host");
                }
            }
        }
        upstream.insert_header(ctx.config.request_id_wire.clone(), ctx.request_id.clone())?;
        if route.auth != AuthMode::Public && !route.policy.forward_token {
            upstream.remove_header(&header::AUTHORIZATION);
        }
        if let Some(identity) = &ctx.identity {
            for (name, value) in identity.wire_headers(&ctx.config.identity_names) {
                upstream.insert_header(name, value.clone())?;
            }
            if let Some(key) = &ctx.config.signature_key {
                let sig = crate::headers::identity_signature(
                    key,
                    &ctx.config.identity_prefix,
                    ctx.request_id(),
                    upstream,
                );
                upstream.insert_header(ctx.config.identity_names.signature().clone(), sig)?;
            }
        }
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
