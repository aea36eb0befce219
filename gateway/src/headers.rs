//! Header policy: identity-header stripping, nginx-style forwarding headers, request ids
//! and per-route header edits.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Per-route header edits, compiled from `set` / `add` / `remove`.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    /// Replace (or create) these headers.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these headers.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Delete these headers.
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Whether there is nothing to do (the common case; lets callers skip work).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits to a request going upstream.
    pub fn apply_request(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        for name in &self.remove {
            req.remove_header(name);
        }
        for (name, value) in &self.set {
            req.insert_header(name.clone(), value.clone())?;
        }
        for (name, value) in &self.add {
            req.append_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    /// Applies the edits to a response going downstream.
    pub fn apply_response(&self, resp: &mut ResponseHeader) -> pingora::Result<()> {
        for name in &self.remove {
            resp.remove_header(name);
        }
        for (name, value) in &self.set {
            resp.insert_header(name.clone(), value.clone())?;
        }
        for (name, value) in &self.add {
            resp.append_header(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

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

/// An IPv4 or IPv6 network, as written `10.0.0.0/8` or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("invalid IP address {addr:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&b| b <= max)
                .ok_or_else(|| format!("invalid prefix length {b:?} (0..={max})"))?,
        };
        Ok(Cidr { addr, bits })
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.bits)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.bits)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Which peers may set forwarding headers (`trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct ProxyTrust {
    /// Trusted networks.
    pub networks: Vec<Cidr>,
    /// Whether Unix-socket peers are trusted (`unix` in the list).
    pub unix: bool,
}

impl ProxyTrust {
    /// Whether this peer IP is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }
}

/// Who the client is, as far as the gateway can tell.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The direct peer: an IP, or `unix:` for socket peers.
    pub peer: String,
    /// Whether the direct peer is a trusted proxy.
    pub trusted: bool,
    /// The real client address (nginx `$realip_remote_addr` logic over `X-Forwarded-For`).
    pub client_ip: String,
}

impl ClientInfo {
    /// Works out the client from the peer and, for trusted peers, `X-Forwarded-For`.
    pub fn resolve(peer_ip: Option<IpAddr>, trust: &ProxyTrust, xff: Option<&str>) -> ClientInfo {
        let (peer, trusted) = match peer_ip {
            Some(ip) => (ip.to_string(), trust.trusts(ip)),
            None => ("unix:".to_string(), trust.unix),
        };
        let mut client_ip = peer.clone();
        if trusted {
            // Walk right to left past trusted hops, like nginx `real_ip_recursive on`.
            if let Some(list) = xff {
                for hop in list.rsplit(',').map(str::trim).filter(|h| !h.is_empty()) {
                    match hop.parse::<IpAddr>() {
                        Ok(ip) => {
                            client_ip = ip.to_string();
                            if !trust.trusts(ip) {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        ClientInfo {
            peer,
            trusted,
            client_ip,
        }
    }

    /// The `X-Forwarded-For` value to send upstream.
    pub fn forwarded_for(&self, incoming: Option<&str>) -> String {
        match incoming {
            Some(prev) if self.trusted && !prev.trim().is_empty() => {
                format!("{}, {}", prev.trim(), self.peer)
            }
            _ => self.peer.clone(),
        }
    }
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

/// Whether a client-supplied request id is safe to keep (printable, bounded).
pub fn acceptable_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
}

/// A fresh 128-bit request id in hex.
pub fn new_request_id() -> String {
    let id: u128 = rand::random();
    format!("{id:032x}")
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

    #[test]
    fn forwarded_for_rules() {
        let trust = ProxyTrust {
            networks: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            unix: false,
        };
        let untrusted =
            ClientInfo::resolve(Some("192.0.2.1".parse().unwrap()), &trust, Some("1.2.3.4"));
        assert_eq!(untrusted.client_ip, "192.0.2.1");
        assert_eq!(untrusted.forwarded_for(Some("1.2.3.4")), "192.0.2.1");
        let via_proxy = ClientInfo::resolve(
            Some("10.1.1.1".parse().unwrap()),
            &trust,
            Some("1.2.3.4, 10.2.2.2"),
        );
        assert_eq!(via_proxy.client_ip, "1.2.3.4");
        assert_eq!(
            via_proxy.forwarded_for(Some("1.2.3.4, 10.2.2.2")),
            "1.2.3.4, 10.2.2.2, 10.1.1.1"
        );
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.0/8")
            .unwrap()
            .contains("::ffff:127.0.0.5".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
    }
}
