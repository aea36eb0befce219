//! Responses the gateway writes itself: errors in the issuer's JSON shape, RFC 6750
//! rejections, 429s, redirects to a login page.

use bytes::Bytes;
use http::{header, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::json;

use super::{Gateway, RequestCtx};
use crate::auth;
use crate::limits::rules::Refusal;
use crate::routing::Route;

/// Builds a JSON error body in the shape the issuer also uses.
fn error_body(code: &str, description: &str, request_id: &str) -> Bytes {
    Bytes::from(
        json!({"error": code, "error_description": description, "request_id": request_id})
            .to_string(),
    )
}

/// The `error` code of a status the gateway answers itself.
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
    /// 429 with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields.
    pub(super) async fn respond_limited(
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

    /// Answers a rejection per RFC 6750: challenge (except for 400) and JSON body.
    pub(super) async fn respond_rejection(
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
    pub(super) async fn respond(
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

    pub(super) async fn respond_error(
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
    pub(super) fn decorate_response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
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

/// Where to send a browser that failed authentication, if the route has a login page.
pub(super) fn login_redirect(
    req: &RequestHeader,
    route: &Route,
    r: &auth::Rejection,
) -> Option<HeaderValue> {
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
