//! Who the client is: the address the per-IP budgets (password failures, SMS sends and
//! verifications, password-reset mails) count against.
//!
//! Forwarding headers are believed only from a peer in `trusted_proxies`
//! ([`TrustedProxies`]); anyone else could write any address there and get a fresh budget
//! with every request. From a trusted peer, `X-Forwarded-For` is walked from the right (every
//! header line, in order, each a comma list), past the addresses of trusted proxies: the
//! first untrusted address is the client (nginx `real_ip_recursive on`). Each proxy appends
//! the address of the peer it saw, so that one was written by a proxy we trust; everything to
//! its left was written by the client and proves nothing. `X-Real-IP` is used only when there
//! is no `X-Forwarded-For` at all (a proxy that sets only `X-Real-IP`, like a bare nginx
//! `proxy_set_header X-Real-IP $remote_addr`).
//!
//! Entries are plain addresses as proxies write them: `203.0.113.7`, `2001:db8::7`,
//! `[2001:db8::7]`, with or without a port (`203.0.113.7:51234`, `[2001:db8::7]:443`).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

pub use crate::config::proxies::TrustedProxies;

/// The client address of a request that came from `peer` with `headers`.
///
/// - Peer not trusted: the peer, whatever the headers say.
/// - Trusted, with `X-Forwarded-For`: the right-most address that is not a trusted proxy; the
///   left-most when every one is trusted (the request started inside the trusted network).
///   An entry that is not an address (`unknown`, the gateway's `unix:` for its Unix-socket
///   clients, garbage) stops the walk, and the client is the last trusted address before it:
///   the hop that handed it over. Anything to the left of it is unverifiable, so taking it
///   would let a client pick its own budget; the hop's address is stable, and only requests
///   that reach it with such an entry share its budget.
/// - Trusted, no `X-Forwarded-For`: `X-Real-IP` when it is an address, else the peer.
///
/// IPv4-mapped IPv6 addresses count as IPv4 (`::ffff:192.0.2.1` is `192.0.2.1`), so one
/// client has one spelling and one budget.
pub fn client_addr(peer: IpAddr, trusted: &TrustedProxies, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut lines = headers.get_all("x-forwarded-for").iter().rev().peekable();
    if lines.peek().is_none() {
        return headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_entry)
            .unwrap_or(peer);
    }
    let mut client = peer;
    for line in lines {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for entry in line.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !trusted.contains(ip) {
                return client;
            }
        }
    }
    client
}

/// The address a client's per-IP budgets count against: an IPv4 address as it is, an IPv6
/// address by its /64 network. One IPv6 subscriber (a home, a VM, a phone) gets a whole /64
/// and can pick any address in it, so counting single addresses would give it 2^64 budgets;
/// a /64 is what one IPv4 address is (RFC 6177, RFC 7421).
pub fn budget_addr(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(net.into())
        }
        v4 => v4,
    }
}

/// One forwarded address: `a.b.c.d`, an IPv6 address bare or in brackets, or either with a
/// port; `None` for anything else.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = if let Ok(ip) = entry.parse::<IpAddr>() {
        ip
    } else if let Some(inner) = entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        IpAddr::V6(inner.parse().ok()?)
    } else {
        // `a.b.c.d:port` and `[v6]:port`; a bare IPv6 address already parsed above.
        let with_port: SocketAddr = entry.parse().ok()?;
        with_port.ip()
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderName, HeaderValue};
    use portcullis_common::net::Cidr;

    use super::*;

    fn trust(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|c| Cidr::parse(c).unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The client of a request from `peer` with these header lines.
    fn resolve(peer: &str, trusted: &TrustedProxies, lines: &[(&str, &str)]) -> IpAddr {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.append(name, HeaderValue::from_str(value).unwrap());
        }
        client_addr(ip(peer), trusted, &headers)
    }

    const PROXIES: &[&str] = &["127.0.0.1/32", "::1/128", "10.0.0.0/8"];

    #[test]
    fn ipv6_budgets_count_per_64() {
        assert_eq!(budget_addr(ip("198.51.100.7")), ip("198.51.100.7"));
        assert_eq!(budget_addr(ip("::ffff:198.51.100.7")), ip("198.51.100.7"));
        assert_eq!(
            budget_addr(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            budget_addr(ip("2001:db8:1:2::1")),
            budget_addr(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            budget_addr(ip("2001:db8:1:2::1")),
            budget_addr(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn untrusted_peers_cannot_forge_an_address() {
        // The default: nobody is trusted, loopback included.
        for trusted in [trust(&[]), trust(PROXIES)] {
            for headers in [
                &[("x-forwarded-for", "198.51.100.1")][..],
                &[("x-real-ip", "198.51.100.1")],
                &[("x-forwarded-for", "198.51.100.1, 10.0.0.1")],
            ] {
                assert_eq!(
                    resolve("192.0.2.9", &trusted, headers),
                    ip("192.0.2.9"),
                    "{headers:?}"
                );
            }
        }
        assert_eq!(
            resolve("127.0.0.1", &trust(&[]), &[("x-real-ip", "198.51.100.1")]),
            ip("127.0.0.1"),
            "loopback is not trusted unless listed"
        );
    }

    #[test]
    fn a_trusted_chain_gives_the_right_most_untrusted_address() {
        let t = trust(PROXIES);
        // The gateway's own line: `client` (it trusts nobody) or `client, proxy`.
        assert_eq!(
            resolve("127.0.0.1", &t, &[("x-forwarded-for", "198.51.100.7")]),
            ip("198.51.100.7")
        );
        // A client-written prefix is ignored: the right-most untrusted address wins.
        assert_eq!(
            resolve(
                "127.0.0.1",
                &t,
                &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3")]
            ),
            ip("198.51.100.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            resolve(
                "10.0.0.1",
                &t,
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "198.51.100.7 , 10.0.0.2"),
                    ("x-forwarded-for", "10.0.0.3"),
                ]
            ),
            ip("198.51.100.7")
        );
        // Empty list elements are skipped.
        assert_eq!(
            resolve("10.0.0.1", &t, &[("x-forwarded-for", "198.51.100.7,, ")]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn an_all_trusted_chain_gives_the_left_most_address() {
        let t = trust(PROXIES);
        assert_eq!(
            resolve(
                "127.0.0.1",
                &t,
                &[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]
            ),
            ip("10.0.0.5")
        );
        // `make run`: user, gateway and issuer all on loopback.
        assert_eq!(
            resolve("127.0.0.1", &t, &[("x-forwarded-for", "127.0.0.1")]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_hop_that_handed_it_over() {
        let t = trust(PROXIES);
        for xff in [
            "198.51.100.7, unknown",
            "198.51.100.7, unix:",
            "198.51.100.7, 300.1.1.1",
            "198.51.100.7, for=1.2.3.4",
            "198.51.100.7, [::1",
            "198.51.100.7, 1.2.3.4:port",
        ] {
            assert_eq!(
                resolve("10.0.0.1", &t, &[("x-forwarded-for", xff)]),
                ip("10.0.0.1"),
                "{xff}"
            );
            // Behind another trusted hop: that hop.
            let behind = format!("{xff}, 10.0.0.2");
            assert_eq!(
                resolve("10.0.0.1", &t, &[("x-forwarded-for", &behind)]),
                ip("10.0.0.2"),
                "{behind}"
            );
        }
        // A line that is not text stops the walk at its place too.
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(client_addr(ip("10.0.0.1"), &t, &headers), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_and_port_spellings() {
        let t = trust(PROXIES);
        for (entry, want) in [
            ("2001:db8::7", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("198.51.100.7:51234", "198.51.100.7"),
            ("::ffff:198.51.100.7", "198.51.100.7"),
        ] {
            assert_eq!(
                resolve("::1", &t, &[("x-forwarded-for", entry)]),
                ip(want),
                "{entry}"
            );
        }
        // A trusted peer seen through a dual-stack socket is still trusted, and the answer
        // has one spelling.
        assert_eq!(
            resolve(
                "::ffff:127.0.0.1",
                &t,
                &[("x-forwarded-for", "198.51.100.7")]
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve("::ffff:192.0.2.9", &t, &[]),
            ip("192.0.2.9"),
            "an untrusted mapped peer counts as its IPv4 address"
        );
    }

    #[test]
    fn x_real_ip_only_from_a_trusted_peer_without_forwarded_for() {
        let t = trust(PROXIES);
        assert_eq!(
            resolve("127.0.0.1", &t, &[("x-real-ip", "198.51.100.7")]),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve("127.0.0.1", &t, &[("x-real-ip", "[2001:db8::7]:80")]),
            ip("2001:db8::7")
        );
        assert_eq!(
            resolve("127.0.0.1", &t, &[("x-real-ip", "garbage")]),
            ip("127.0.0.1")
        );
        // The gateway sends both: `X-Forwarded-For` decides.
        assert_eq!(
            resolve(
                "127.0.0.1",
                &t,
                &[
                    ("x-forwarded-for", "198.51.100.7"),
                    ("x-real-ip", "6.6.6.6")
                ]
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve("192.0.2.9", &t, &[("x-real-ip", "198.51.100.7")]),
            ip("192.0.2.9")
        );
    }
}
