//! Authenticating one request for one route: find the token, verify it, apply the route's
//! policy, and compute the identity headers. This is the piece any Pingora proxy can reuse
//! (the "plugin" use): call [`authenticate`] in `request_filter`, answer a [`Rejection`] with
//! its status and `WWW-Authenticate`, and add [`Identity::headers`] to the upstream request.

pub(crate) mod identity;
pub(crate) mod policy;
pub(crate) mod sources;

pub use identity::{Identity, IdentityHeaderNames};

use http::HeaderValue;
use pingora::http::RequestHeader;
use serde_json::Value;

use crate::routing::AuthMode;
use crate::verify::{claim_at, header_value, now_secs, AuthError, Verifier, VerifyObserver};
use policy::{ArrayFormat, Denial, RoutePolicy};
use sources::TokenSourceError;

/// Why a request was not let through, ready to be answered per RFC 6750.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400, 401 or 403.
    pub status: u16,
    /// RFC 6750 error code (`invalid_request`, `invalid_token`, `insufficient_scope`); None
    /// when no token was sent.
    pub error: Option<&'static str>,
    /// Client-safe description (never token contents).
    pub description: &'static str,
    /// Metrics label.
    pub reason: &'static str,
    /// Scopes the route needs (for `insufficient_scope`).
    pub scope: Option<String>,
}

impl Rejection {
    fn token(e: AuthError) -> Rejection {
        Rejection {
            status: 401,
            error: (e != AuthError::Missing).then_some("invalid_token"),
            description: e.description(),
            reason: e.reason(),
            scope: None,
        }
    }

    fn denied(d: Denial) -> Rejection {
        let unauthenticated = d.is_unauthenticated();
        Rejection {
            status: if unauthenticated { 401 } else { 403 },
            error: Some(if unauthenticated {
                "invalid_token"
            } else {
                "insufficient_scope"
            }),
            description: d.description(),
            reason: d.reason(),
            scope: match d {
                Denial::InsufficientScope(s) => Some(s),
                _ => None,
            },
        }
    }

    fn bad_request(e: TokenSourceError) -> Rejection {
        Rejection {
            status: 400,
            error: Some("invalid_request"),
            description: match e {
                TokenSourceError::TwoAuthorizationHeaders => "more than one Authorization header",
                TokenSourceError::ConflictingTokens => "the request carries more than one token",
            },
            reason: "two_tokens",
            scope: None,
        }
    }

    /// The `WWW-Authenticate` challenge for this rejection.
    pub fn www_authenticate(&self, realm: &str) -> HeaderValue {
        let mut v = format!("Bearer realm=\"{realm}\"");
        if let Some(code) = self.error {
            v.push_str(&format!(
                ", error=\"{code}\", error_description=\"{}\"",
                self.description
            ));
        }
        if let Some(scope) = &self.scope {
            v.push_str(&format!(", scope=\"{scope}\""));
        }
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }
}

/// What to do with a request.
pub enum Outcome {
    /// Public route: no token looked at.
    Public,
    /// Optional route without a token.
    Anonymous,
    /// A verified caller allowed by the policy.
    Allowed(Identity),
    /// Refused.
    Rejected(Rejection),
}

fn claim_text(v: &Value, arrays: &ArrayFormat) -> String {
    match (v, arrays) {
        (Value::String(s), _) => s.clone(),
        (Value::Array(items), ArrayFormat::Join(sep))
            if items.iter().all(|i| !i.is_array() && !i.is_object()) =>
        {
            items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect::<Vec<_>>()
                .join(sep)
        }
        (other, _) => other.to_string(),
    }
}

/// Authenticates `req` for a route with `mode` and `policy`.
pub async fn authenticate(
    req: &RequestHeader,
    mode: AuthMode,
    policy: &RoutePolicy,
    verifier: &Verifier,
    observer: &dyn VerifyObserver,
) -> Outcome {
    if mode == AuthMode::Public {
        return Outcome::Public;
    }
    let token = match sources::extract(req, &policy.sources) {
        Ok(Some(t)) => t,
        Ok(None) if mode == AuthMode::Optional => return Outcome::Anonymous,
        Ok(None) => return Outcome::Rejected(Rejection::token(AuthError::Missing)),
        Err(e) => return Outcome::Rejected(Rejection::bad_request(e)),
    };
    let verified = match verifier.verify(token, observer).await {
        Ok(v) => v,
        Err(e) => return Outcome::Rejected(Rejection::token(e)),
    };
    // The full claims only for routes that look at them (they are not kept in the cache).
    let claims = if policy.claims.is_empty() && policy.claim_headers.is_empty() {
        None
    } else {
        match verified.claims() {
            Ok(c) => Some(c),
            Err(e) => return Outcome::Rejected(Rejection::token(e)),
        }
    };
    if let Err(d) = policy.check(&verified, claims.as_ref(), now_secs()) {
        return Outcome::Rejected(Rejection::denied(d));
    }
    let mut extra = Vec::with_capacity(policy.claim_headers.len());
    for (path, name) in &policy.claim_headers {
        if let Some(v) = claims.as_ref().and_then(|c| claim_at(c, path)) {
            match header_value(&claim_text(v, &policy.claim_arrays)) {
                Ok(value) => extra.push((name.clone(), value)),
                Err(e) => return Outcome::Rejected(Rejection::token(e)),
            }
        }
    }
    Outcome::Allowed(Identity {
        token: verified,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_values_as_header_text() {
        let comma = ArrayFormat::default();
        assert_eq!(claim_text(&json!("pro"), &comma), "pro");
        assert_eq!(claim_text(&json!(["a", "b", 3]), &comma), "a,b,3");
        assert_eq!(
            claim_text(&json!(["a", "b"]), &ArrayFormat::Join(" ".into())),
            "a b"
        );
        assert_eq!(
            claim_text(&json!(["a", "b"]), &ArrayFormat::Json),
            r#"["a","b"]"#
        );
        assert_eq!(claim_text(&json!({"k": 1}), &comma), r#"{"k":1}"#);
        assert_eq!(claim_text(&json!(true), &comma), "true");
    }
}
