//! The request pipeline: `request_filter` as a sequence of named steps. Each step either lets
//! the request go on or answers it itself.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::answers::login_redirect;
use super::{peer_ip, Gateway, RequestCtx};
use crate::auth::sources;
use crate::auth::{self, Outcome};
use crate::forwarding::client::ClientInfo;
use crate::forwarding::headers::{acceptable_request_id, new_request_id, X_FORWARDED_FOR};
use crate::limits::rules::{self, Stage};
use crate::routing::path;
use crate::routing::{Action, AuthMode, Route, RouteMatch};

/// A request's host and normalised path, once both are known to be acceptable.
pub(super) struct Head {
    /// Client `Host` (with port).
    pub(super) host: String,
    /// The normalised path (what routes match and what is forwarded).
    pub(super) path: String,
}

/// The CORS facts of a request: its `Origin`, and for a preflight the method it announces.
pub(super) struct CorsRequest {
    origin: Option<HeaderValue>,
    preflight: Option<Method>,
}

impl CorsRequest {
    /// Reads `Origin` and, on an `OPTIONS` with an origin, `Access-Control-Request-Method`.
    pub(super) fn of(req: &RequestHeader) -> CorsRequest {
        let origin = req.headers.get(header::ORIGIN).cloned();
        let preflight = match (&req.method, &origin) {
            (&Method::OPTIONS, Some(_)) => req
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok()),
            _ => None,
        };
        CorsRequest { origin, preflight }
    }
}

impl Gateway {
    /// First step, before anything else: the client's identity headers are dropped, the
    /// client address and the request id resolved.
    pub(super) fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) {
        self.live.metrics.active_requests.inc();
        ctx.counted = true;
        // Identity headers belong to the gateway alone: drop what the client sent, first.
        ctx.config.identity_prefix.strip(session.req_header_mut());

        let req = session.req_header();
        let xff = req
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok());
        let client = ClientInfo::resolve(peer_ip(session), &ctx.config.trust, xff);
        ctx.request_id = match req.headers.get(&ctx.config.request_id_header) {
            Some(v) if client.trusted && acceptable_request_id(v.as_bytes()) => v.clone(),
            _ => new_request_id(),
        };
        ctx.client = Some(client);
    }

    /// Host, `Content-Length` framing and path: anything ambiguous is answered 400 here.
    pub(super) async fn read_head(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Head>> {
        let req = session.req_header();
        let host = match request_host(req) {
            Ok(_) if repeated_content_length(req) => {
                let why = "more than one Content-Length value";
                self.respond_error(session, ctx, 400, why, &[]).await?;
                return Ok(None);
            }
            Ok(h) => h,
            Err(why) => {
                self.respond_error(session, ctx, 400, why, &[]).await?;
                return Ok(None);
            }
        };
        match path::normalize(req.uri.path()) {
            Ok(path) => Ok(Some(Head { host, path })),
            Err(e) => {
                self.respond_error(session, ctx, 400, &e.to_string(), &[])
                    .await?;
                Ok(None)
            }
        }
    }

    /// The route for the request (a CORS preflight is routed as the request it announces);
    /// 404 and 405 are answered here.
    pub(super) async fn find_route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        host: &str,
        path: &str,
        cors: &CorsRequest,
    ) -> Result<Option<Arc<Route>>> {
        let cfg = ctx.config.clone();
        let method = match &cors.preflight {
            Some(m) => m.clone(),
            None => session.req_header().method.clone(),
        };
        let lookup_host = strip_port(host).to_ascii_lowercase();
        match cfg.router.lookup(&lookup_host, path, &method) {
            RouteMatch::Found(r) => Ok(Some(r.clone())),
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
                Ok(None)
            }
            RouteMatch::NotFound => {
                self.respond_error(session, ctx, 404, "no route matches this request", &[])
                    .await?;
                Ok(None)
            }
        }
    }

    /// CORS: a preflight is answered here (tokenless, as browsers send it); an allowed
    /// `Origin` is remembered for the response. Returns whether the request goes on.
    pub(super) async fn apply_cors(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        cors_request: CorsRequest,
    ) -> Result<bool> {
        let (Some(cors), Some(origin)) = (&route.cors, cors_request.origin) else {
            return Ok(true);
        };
        let allowed = origin.to_str().is_ok_and(|o| cors.allows_origin(o));
        if let Some(requested) = &cors_request.preflight {
            // Browsers send no credentials on a preflight: answer it here, tokenless.
            let asked = session
                .req_header()
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .and_then(|v| v.to_str().ok());
            match allowed
                .then(|| cors.preflight(&origin, requested, asked))
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
            return Ok(false);
        }
        if allowed {
            ctx.cors_origin = Some(origin);
        }
        Ok(true)
    }

    /// A declared body over the route's `max_body_size` is refused (413) before any upstream
    /// sees it. Returns whether the request goes on.
    pub(super) async fn check_declared_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
    ) -> Result<bool> {
        let Some(max) = route.max_body_size else {
            return Ok(true);
        };
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
            return Ok(false);
        }
        Ok(true)
    }

    /// Runs authentication for the route; answers rejections itself. Returns whether the
    /// request may continue.
    pub(super) async fn authenticate(
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
    pub(super) async fn within_limits(
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

    /// Last step: a fixed `return:` is answered here (`true`); a proxied request gets its
    /// forwarded URI and goes on to the upstream (`false`).
    pub(super) async fn dispatch(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        path: &str,
    ) -> Result<bool> {
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
                ctx.forward_uri = forward_uri(session.req_header(), route, path);
                Ok(false)
            }
        }
    }
}

/// The URI sent upstream: the rewritten normalised path plus the query, minus a token sent
/// as a query parameter.
fn forward_uri(req: &RequestHeader, route: &Route, path: &str) -> String {
    let mut uri = route.rewrite.apply(path);
    if let Some(q) = req.uri.query() {
        // A token sent as a query parameter never travels further.
        let kept = match &route.policy.sources.query {
            Some(name) if route.auth != AuthMode::Public => sources::strip_query_param(q, name),
            _ => q.to_string(),
        };
        // An empty query stays as sent (`?`); one emptied by the strip goes.
        if !kept.is_empty() || q.is_empty() {
            let q = kept;
            uri.push('?');
            uri.push_str(&q);
        }
    }
    uri
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

pub(super) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}
