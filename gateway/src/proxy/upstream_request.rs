//! `upstream_request_filter`'s steps: the `Host` the upstream sees, nginx-style forwarding
//! headers, and the identity (or no credentials at all) it receives.

use http::header;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{is_tls, RequestCtx};
use crate::forwarding::client::ClientInfo;
use crate::routing::{Action, AuthMode, HostHeader, Route};
use crate::upstream::BackendAddress;

/// `Host` per the route's `host_header`: preserved (added when the client sent none), fixed,
/// or the chosen backend's address.
#[inline]
pub(super) fn set_host(
    upstream: &mut RequestHeader,
    route: &Route,
    ctx: &RequestCtx,
) -> Result<()> {
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
    Ok(())
}

/// `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto` and `X-Forwarded-Host` like nginx:
/// the client's own values are kept only from a trusted proxy.
#[inline]
pub(super) fn set_forwarding(
    upstream: &mut RequestHeader,
    client: &ClientInfo,
    host: &str,
    session: &Session,
) -> Result<()> {
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
        _ if !host.is_empty() => upstream.insert_header("x-forwarded-host", host)?,
        _ => {
            upstream.remove_header("x-forwarded-host");
        }
    }
    Ok(())
}

/// `Authorization` is dropped unless the route forwards it; the verified identity headers
/// (and their signature, when configured) are added.
#[inline]
pub(super) fn set_identity(
    upstream: &mut RequestHeader,
    route: &Route,
    ctx: &RequestCtx,
) -> Result<()> {
    if route.auth != AuthMode::Public && !route.policy.forward_token {
        upstream.remove_header(&header::AUTHORIZATION);
    }
    if let Some(identity) = &ctx.identity {
        for (name, value) in identity.wire_headers(&ctx.config.identity_names) {
            upstream.insert_header(name, value.clone())?;
        }
        if let Some(key) = &ctx.config.signature_key {
            let sig = crate::auth::identity::identity_signature(
                key,
                &ctx.config.identity_prefix,
                ctx.request_id(),
                upstream,
            );
            upstream.insert_header(ctx.config.identity_names.signature().clone(), sig)?;
        }
    }
    Ok(())
}
