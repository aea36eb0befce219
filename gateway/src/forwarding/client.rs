//! Trusted proxies and the client address: who may set forwarding headers, and who the
//! client is as far as the gateway can tell (nginx `real_ip` habits).

use std::net::IpAddr;

pub use portcullis_common::net::Cidr;

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
    }
}
