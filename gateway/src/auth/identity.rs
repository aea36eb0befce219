//! Identity headers: the prefix only the gateway may set (stripped from every client request
//! in any spelling), the names and values of the verified identity, and their signature.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::verify::VerifiedToken;

/// The identity-header prefix in its canonical form (lower case, `-` separators).
#[derive(Debug, Clone)]
pub struct IdentityPrefix(String);

impl IdentityPrefix {
    /// `X-Auth-` (or any configured spelling) becomes `x-auth-`.
    pub fn new(prefix: &str) -> Self {
        IdentityPrefix(canonical(prefix))
    }

    /// The canonical prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a header name belongs to the gateway: any case, `_` or `-`.
    pub fn owns(&self, name: &str) -> bool {
        let p = self.0.as_bytes();
        let n = name.as_bytes();
        n.len() >= p.len()
            && n[..p.len()].iter().zip(p).all(|(&a, &b)| {
                let a = a.to_ascii_lowercase();
                a == b || (a == b'_' && b == b'-')
            })
    }

    /// Removes every header the client sent under the prefix; returns how many names.
    pub fn strip(&self, req: &mut RequestHeader) -> usize {
        let mut doomed: Vec<HeaderName> = Vec::new();
        for name in req.headers.keys() {
            if self.owns(name.as_str()) && !doomed.contains(name) {
                doomed.push(name.clone());
            }
        }
        for name in &doomed {
            req.remove_header(name);
        }
        doomed.len()
    }
}

fn canonical(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// `v1=<base64url HMAC-SHA256>` over the request id and every identity header of the
/// upstream request, sorted by name: `"{request_id}\n" + "{name}:{value}\n"…` (lower-case
/// names, the signature header itself excluded). Upstreams recompute it with the shared
/// secret to prove the headers came from the gateway.
pub fn identity_signature(
    key: &[u8],
    prefix: &IdentityPrefix,
    request_id: &str,
    req: &RequestHeader,
) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let signature_name = format!("{}signature", prefix.as_str());
    let mut fields: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .filter(|(n, _)| prefix.owns(n.as_str()) && n.as_str() != signature_name)
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    fields.sort();
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(request_id.as_bytes());
    mac.update(b"\n");
    for (n, v) in fields {
        mac.update(n.as_bytes());
        mac.update(b":");
        mac.update(v);
        mac.update(b"\n");
    }
    let tag = mac.finalize().into_bytes();
    format!(
        "v1={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
    )
}

/// A verified caller on a route.
pub struct Identity {
    /// The verified token (shared with the cache).
    pub token: Arc<VerifiedToken>,
    /// The route's extra claim headers.
    pub extra: Vec<(HeaderName, HeaderValue)>,
}

impl Identity {
    /// All identity headers to send upstream: the defaults then the route's mappings.
    pub fn headers<'a>(
        &'a self,
        names: &'a IdentityHeaderNames,
    ) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> {
        self.token
            .identity()
            .filter_map(move |(slot, v)| names.0.get(slot)?.as_ref().map(|n| (n, v)))
            .chain(self.extra.iter().map(|(n, v)| (n, v)))
    }

    /// [`Identity::headers`] with each name as `Bytes` for `RequestHeader::insert_header`:
    /// the default names are shared (no copy per request, unlike a `HeaderName`).
    pub fn wire_headers<'a>(
        &'a self,
        names: &'a IdentityHeaderNames,
    ) -> impl Iterator<Item = (Bytes, &'a HeaderValue)> {
        self.token
            .identity()
            .filter_map(move |(slot, v)| names.2.get(slot)?.clone().map(|n| (n, v)))
            .chain(
                self.extra
                    .iter()
                    .map(|(n, v)| (Bytes::copy_from_slice(n.as_str().as_bytes()), v)),
            )
    }
}

/// The default identity header names under the configured prefix, computed once (indexed
/// like [`IDENTITY_SUFFIXES`]).
#[derive(Debug, Clone)]
pub struct IdentityHeaderNames(Vec<Option<HeaderName>>, HeaderName, Vec<Option<Bytes>>);

/// Suffixes of the default identity headers (`X-Auth-Subject`, …).
pub const IDENTITY_SUFFIXES: [&str; 8] = crate::verify::IDENTITY_SLOTS;

impl IdentityHeaderNames {
    /// Names for `prefix` (e.g. `x-auth-`).
    pub fn new(prefix: &IdentityPrefix) -> Self {
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{}{suffix}", prefix.as_str()).as_bytes()).ok()
        };
        let names: Vec<Option<HeaderName>> = IDENTITY_SUFFIXES.iter().map(|s| name(s)).collect();
        let wire = names
            .iter()
            .map(|n| {
                n.as_ref()
                    .map(|n| Bytes::copy_from_slice(n.as_str().as_bytes()))
            })
            .collect();
        IdentityHeaderNames(
            names,
            name("signature").unwrap_or(HeaderName::from_static("x-auth-signature")),
            wire,
        )
    }

    /// The `…-Signature` header name.
    pub fn signature(&self) -> &HeaderName {
        &self.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_prefix_matches_every_spelling() {
        let p = IdentityPrefix::new("X-Auth-");
        for n in [
            "x-auth-subject",
            "X-AUTH-ROLES",
            "x_auth_subject",
            "X_Auth-Claims",
            "x-auth_scopes",
        ] {
            assert!(p.owns(n), "{n}");
        }
        for n in ["x-author", "authorization", "x-authz", "xauth-subject"] {
            assert!(!p.owns(n), "{n}");
        }
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("X-Auth-Subject", "admin").unwrap();
        req.append_header("x-auth-subject", "root").unwrap();
        req.append_header("X_Auth_Roles", "admin").unwrap();
        req.append_header("X-Other", "1").unwrap();
        assert_eq!(p.strip(&mut req), 2);
        assert_eq!(req.headers.len(), 1);
    }
}
