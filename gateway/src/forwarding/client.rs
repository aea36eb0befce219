//! Trusted proxies and the client address: who may set forwarding headers, and who the
//! client is as far as the gateway can tell (nginx `real_ip` habits).

use std::net::IpAddr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
