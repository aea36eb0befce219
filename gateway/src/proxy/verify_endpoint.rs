//! `GET /_portcullis/verify` (or the configured path): nginx `auth_request` compatibility.

use bytes::Bytes;
use http::{header, HeaderValue, Method};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::pipeline::strip_port;
use super::{Gateway, RequestCtx};
use crate::auth::policy::RoutePolicy;
use crate::auth::{self, Outcome};
use crate::routing::path;
use crate::routing::{AuthMode, RouteMatch};

impl Gateway {
    /// `auth_request` compatibility: answers 200 with the identity headers, or 401/403.
    /// The policy is that of the route `X-Original-URI` (and `X-Original-Method`,
    /// `X-Original-Host`) would match; without those headers, any trusted token passes.
    pub(super) async fn verify_endpoint(
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
}
