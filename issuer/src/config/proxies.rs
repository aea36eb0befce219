//! `trusted_proxies`: the peers whose forwarding headers (`X-Forwarded-For`, `X-Real-IP`) the
//! issuer believes. Written as CIDRs or bare addresses (`[127.0.0.1/32, "::1", 10.0.0.0/8]`);
//! absent or empty trusts nobody, so the peer address is the client. How the client address is
//! then worked out is `client_addr`.

use std::net::IpAddr;

use portcullis_common::net::Cidr;
use serde_saphyr::Spanned;

use super::ConfigError;

/// The compiled `trusted_proxies`: plain data, read on every request that counts per client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<Cidr>,
}

impl TrustedProxies {
    /// A set of trusted networks (the configuration builds it with [`TrustedProxies::compile`]).
    pub fn new(networks: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies { networks }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }

    /// Reads the list as written in `file`; a bad entry is reported at its line and column.
    pub(super) fn compile(
        list: &[Spanned<String>],
        file: &str,
    ) -> Result<TrustedProxies, ConfigError> {
        let mut networks = Vec::with_capacity(list.len());
        for entry in list {
            let text = entry.value.trim();
            // The gateway's list may say `unix` (peers on its Unix-socket listeners). The
            // issuer has none: `listen` and `admin_listen` are TCP addresses, so the keyword
            // could never match a peer. Refusing it says so instead of silently trusting
            // nothing an operator expected to trust.
            if text == "unix" {
                return Err(ConfigError::at(
                    file,
                    entry,
                    "trusted_proxies: `unix` trusts Unix-socket peers, but the issuer listens \
                     on TCP only (listen, admin_listen): list the proxy's IP address or network",
                ));
            }
            let cidr = Cidr::parse(text)
                .map_err(|e| ConfigError::at(file, entry, format!("trusted_proxies: {e}")))?;
            networks.push(cidr);
        }
        Ok(TrustedProxies { networks })
    }
}
