//! `upstream_request_filter`'s steps: the `Host` the upstream sees, nginx-style forwarding
//! headers, and the identity (or no credentials at all) it receives.

use http::{header, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{is_tls, RequestCtx};
use crate::forwarding::client::ClientInfo;
use crate::forwarding::headers::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
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
    // Names as static text (Pingora keeps them as given for the wire, no copy) and values
    // built once: an untrusted client's X-Forwarded-For and X-Real-IP are the same address.
    let incoming = upstream
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok());
    let peer = text_value(&client.peer)?;
    let xff = match client.forwarded_chain(incoming) {
        Some(chain) => text_value(&chain)?,
        None => peer.clone(),
    };
    upstream.insert_header("x-forwarded-for", xff)?;
    let real_ip = if client.client_ip == client.peer {
        peer
    } else {
        text_value(&client.client_ip)?
    };
    upstream.insert_header("x-real-ip", real_ip)?;
    let proto = match upstream.headers.get(&X_FORWARDED_PROTO) {
        Some(p) if client.trusted => p.clone(),
        _ if is_tls(session) => HeaderValue::from_static("https"),
        _ => HeaderValue::from_static("http"),
    };
    upstream.insert_header("x-forwarded-proto", proto)?;
    match upstream.headers.get(&X_FORWARDED_HOST) {
        Some(h) if client.trusted => {
            let h = h.clone();
            upstream.insert_header("x-forwarded-host", h)?
        }
        _ if !host.is_empty() => upstream.insert_header("x-forwarded-host", text_value(host)?)?,
        _ => {
            upstream.remove_header(&X_FORWARDED_HOST);
        }
    }
    Ok(())
}

/// A header value from text the gateway already checked (an address, a host it routed on).
fn text_value(text: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(text).or_err(ErrorType::InvalidHTTPHeader, "forwarding header value")
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
