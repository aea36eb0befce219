//! The `upstreams` section: backend groups, balancing, health checks, timeouts, retries.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::file::{HealthCheckFile, IncludeFile, MainFile, TimeoutsFile, UpstreamFile};
use super::listeners::read_cert_chain;
use super::{dur, ConfigError, Loc, Source};
use crate::upstream::{
    Backend, BackendAddress, HealthCheck, HealthCheckKind, StateCarry, UpstreamGroup,
};

/// `upstreams` from every file (a name may be defined once); backends keep the health state
/// `backends` hands over.
pub(super) fn compile_upstreams(
    main_src: &Source,
    main: &MainFile,
    includes: &[(Source, IncludeFile)],
    backends: &StateCarry,
) -> Result<BTreeMap<String, Arc<UpstreamGroup>>, ConfigError> {
    // Upstreams from every file; a name may be defined once.
    let mut upstream_defs: Vec<(&Source, &String, &Spanned<UpstreamFile>)> = Vec::new();
    for (name, u) in &main.upstreams {
        upstream_defs.push((main_src, name, u));
    }
    for (src, inc) in includes {
        for (name, u) in &inc.upstreams {
            upstream_defs.push((src, name, u));
        }
    }
    let mut upstreams: BTreeMap<String, Arc<UpstreamGroup>> = BTreeMap::new();
    let mut upstream_locs: HashMap<String, Loc> = HashMap::new();
    for (src, name, u) in upstream_defs {
        let loc = src.at(u);
        if let Some(prev) = upstream_locs.get(name) {
            return Err(loc.err(format!(
                "upstreams.{name}: already defined at {}",
                prev.desc()
            )));
        }
        let group = compile_upstream(src, name, u, backends)?;
        upstream_locs.insert(name.clone(), loc);
        upstreams.insert(name.clone(), Arc::new(group));
    }

    Ok(upstreams)
}

/// Parses a backend entry: `host:port`, `http://host:port`, `https://host:port` or
/// `unix:/path.sock`, optionally followed by `weight=N`.
fn parse_backend(spec: &str) -> Result<(BackendAddress, u32), String> {
    let mut parts = spec.split_whitespace();
    let addr = parts.next().ok_or("empty backend")?;
    let mut weight = 1;
    for opt in parts {
        match opt.split_once('=') {
            Some(("weight", w)) => {
                weight = w
                    .parse::<u32>()
                    .ok()
                    .filter(|&w| (1..=1000).contains(&w))
                    .ok_or_else(|| format!("weight must be 1..=1000, got {w:?}"))?
            }
            _ => {
                return Err(format!(
                    "unknown backend option {opt:?} (expected weight=N)"
                ))
            }
        }
    }
    let resolve = |hostport: &str| -> Result<SocketAddr, String> {
        if hostport.contains('/') {
            return Err(format!(
                "{hostport:?}: a backend is an address, not a URL with a path"
            ));
        }
        hostport
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {hostport:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{hostport:?} resolves to no address"))
    };
    let address = if let Some(p) = addr.strip_prefix("unix:") {
        if !p.starts_with('/') {
            return Err(format!("unix backend path must be absolute, got {p:?}"));
        }
        BackendAddress::Unix(PathBuf::from(p))
    } else if let Some(hp) = addr.strip_prefix("https://") {
        let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(hp);
        if !hp.contains(':') {
            return Err(format!(
                "{addr:?}: give the port explicitly (https://host:443)"
            ));
        }
        BackendAddress::Tls {
            addr: resolve(hp)?,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        }
    } else {
        BackendAddress::Tcp(resolve(addr.strip_prefix("http://").unwrap_or(addr))?)
    };
    Ok((address, weight))
}

fn compile_upstream(
    src: &Source,
    name: &str,
    u: &Spanned<UpstreamFile>,
    carry: &StateCarry,
) -> Result<UpstreamGroup, ConfigError> {
    use pingora::upstreams::peer::HttpPeer;
    let v = &u.value;
    let key = format!("upstreams.{name}");
    if v.backends.is_empty() {
        return Err(src
            .at(u)
            .err(format!("{key}.backends: at least one backend is required")));
    }
    let (connect, read, write, idle) = timeouts(src, &v.timeouts, &key)?;
    let tls = v.tls.as_ref().map(|t| &t.value);
    // Pingora pools upstream connections by peer hash, which ignores the CA: without a
    // per-group key, a connection verified against one group's CA could serve another group
    // (or survive a reload that changed the CA). Hash the group's trust settings into it.
    let mut pool_key = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&name, &mut pool_key);
    let ca = match tls.and_then(|t| t.ca_file.as_ref()) {
        None => None,
        Some(ca) => {
            let p = src.resolve(&ca.value);
            let ders = read_cert_chain(&p).map_err(|e| {
                src.at(ca)
                    .err(format!("{key}.tls.ca_file: {}: {e}", p.display()))
            })?;
            std::hash::Hash::hash(&ders, &mut pool_key);
            let certs: Vec<pingora::utils::tls::WrappedX509> = ders
                .into_iter()
                .map(|d| pingora::utils::tls::WrappedX509::new(d, pingora::utils::tls::parse_x509))
                .collect();
            Some(Arc::<[pingora::utils::tls::WrappedX509]>::from(certs))
        }
    };
    let verify = tls.and_then(|t| t.verify).unwrap_or(true);
    std::hash::Hash::hash(&verify, &mut pool_key);
    let pool_key = std::hash::Hasher::finish(&pool_key);
    let mut backends = Vec::new();
    let mut seen = Vec::new();
    for b in &v.backends {
        let (address, weight) =
            parse_backend(&b.value).map_err(|e| src.at(b).err(format!("{key}.backends: {e}")))?;
        if seen.contains(&address) {
            return Err(src
                .at(b)
                .err(format!("{key}.backends: {} is listed twice", address)));
        }
        seen.push(address.clone());
        let mut peer = match &address {
            BackendAddress::Tcp(a) => HttpPeer::new(*a, false, String::new()),
            BackendAddress::Tls { addr, host } => {
                let sni = tls
                    .and_then(|t| t.sni.clone())
                    .unwrap_or_else(|| host.clone());
                let mut p = HttpPeer::new(*addr, true, sni);
                p.options.verify_cert = verify;
                p.options.verify_hostname = verify;
                p.options.ca = ca.clone();
                p
            }
            BackendAddress::Unix(path) => {
                HttpPeer::new_uds(&path.display().to_string(), false, String::new())
                    .map_err(|e| src.at(b).err(format!("{key}.backends: {e}")))?
            }
        };
        peer.group_key = pool_key;
        peer.options.connection_timeout = Some(connect);
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(write);
        peer.options.idle_timeout = Some(idle);
        backends.push(Backend {
            label: address.to_string(),
            state: carry.state_for(name, &address),
            address,
            weight,
            peer,
        });
    }
    if tls.is_some()
        && !backends
            .iter()
            .any(|b| matches!(b.address, BackendAddress::Tls { .. }))
    {
        return Err(src
            .at(u)
            .err(format!("{key}.tls: set, but no backend is https://")));
    }
    let health_check = v
        .health_check
        .as_ref()
        .map(|h| health_check(src, h, &key))
        .transpose()?;
    Ok(UpstreamGroup::new(
        name.to_string(),
        backends,
        v.retries.unwrap_or(1),
        v.max_fails.unwrap_or(1),
        dur(
            src,
            &v.fail_timeout,
            &format!("{key}.fail_timeout"),
            Duration::from_secs(10),
        )?,
        health_check,
    ))
}

/// `timeouts`: connect, read, write (none of them zero) and idle.
fn timeouts(
    src: &Source,
    t: &TimeoutsFile,
    key: &str,
) -> Result<(Duration, Duration, Duration, Duration), ConfigError> {
    let connect = dur(
        src,
        &t.connect,
        &format!("{key}.timeouts.connect"),
        Duration::from_secs(5),
    )?;
    let read = dur(
        src,
        &t.read,
        &format!("{key}.timeouts.read"),
        Duration::from_secs(60),
    )?;
    let write = dur(
        src,
        &t.write,
        &format!("{key}.timeouts.write"),
        Duration::from_secs(60),
    )?;
    let idle = dur(
        src,
        &t.idle,
        &format!("{key}.timeouts.idle"),
        Duration::from_secs(60),
    )?;
    for (k, d, value) in [
        ("connect", &t.connect, connect),
        ("read", &t.read, read),
        ("write", &t.write, write),
    ] {
        if let Some(d) = d {
            if value.is_zero() {
                return Err(src
                    .at(d)
                    .err(format!("{key}.timeouts.{k}: must be greater than zero")));
            }
        }
    }
    Ok((connect, read, write, idle))
}

/// `health_check`: tcp (the default) or http with a path, interval (at least 100ms),
/// timeout and thresholds.
fn health_check(
    src: &Source,
    h: &Spanned<HealthCheckFile>,
    key: &str,
) -> Result<HealthCheck, ConfigError> {
    let hv = &h.value;
    let kind = match hv.kind.as_ref().map(|k| k.value.as_str()) {
        None | Some("tcp") => HealthCheckKind::Tcp,
        Some("http") => {
            let path = hv
                .path
                .as_ref()
                .map(|p| p.value.clone())
                .unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                return Err(src
                    .at(h)
                    .err(format!("{key}.health_check.path: must start with '/'")));
            }
            HealthCheckKind::Http {
                path,
                host: hv.host.clone().unwrap_or_else(|| "localhost".into()),
            }
        }
        Some(other) => {
            let k = hv
                .kind
                .as_ref()
                .map(|k| src.at(k))
                .unwrap_or_else(|| src.at(h));
            return Err(k.err(format!(
                "{key}.health_check.type: {other:?} is not one of tcp, http"
            )));
        }
    };
    let interval = dur(
        src,
        &hv.interval,
        &format!("{key}.health_check.interval"),
        Duration::from_secs(5),
    )?;
    if interval < Duration::from_millis(100) {
        return Err(src.at(h).err(format!(
            "{key}.health_check.interval: must be at least 100ms"
        )));
    }
    Ok(HealthCheck {
        kind,
        interval,
        timeout: dur(
            src,
            &hv.timeout,
            &format!("{key}.health_check.timeout"),
            Duration::from_secs(1),
        )?,
        healthy_threshold: hv.healthy_threshold.unwrap_or(1).max(1),
        unhealthy_threshold: hv.unhealthy_threshold.unwrap_or(1).max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_forms() {
        assert!(matches!(
            parse_backend("127.0.0.1:9000").unwrap(),
            (BackendAddress::Tcp(_), 1)
        ));
        assert!(matches!(
            parse_backend("127.0.0.1:9000 weight=3").unwrap(),
            (_, 3)
        ));
        assert!(matches!(
            parse_backend("unix:/tmp/x.sock").unwrap().0,
            BackendAddress::Unix(_)
        ));
        assert!(matches!(
            parse_backend("https://localhost:8443").unwrap().0,
            BackendAddress::Tls { .. }
        ));
        assert!(parse_backend("127.0.0.1:9000 weight=0").is_err());
        assert!(parse_backend("127.0.0.1:9000 max=1").is_err());
        assert!(parse_backend("unix:relative.sock").is_err());
    }
}
