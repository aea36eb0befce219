//! The `server`, `listeners` and `admin` sections: process settings and listening endpoints
//! (TCP, TLS, Unix sockets).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::file::{self, ListenerFile, MainFile};
use super::{dur, ConfigError, ListenerSpec, Loc, ServerSettings, Source, TlsSpec};

/// `listeners` and `admin`: the traffic listeners and the admin listener; no address twice.
pub(super) fn compile_listeners(
    main_src: &Source,
    main: &MainFile,
) -> Result<(Vec<ListenerSpec>, Option<ListenerSpec>), ConfigError> {
    let mut listeners = Vec::new();
    for l in &main.listeners {
        listeners.push(compile_listener(main_src, l, "listeners")?);
    }
    if listeners.is_empty() {
        return Err(ConfigError::File {
            file: main_src.name.to_string(),
            message: "listeners: at least one listener is required".into(),
        });
    }
    let admin = match &main.admin {
        Some(a) => {
            let spec = compile_listener(main_src, a, "admin")?;
            if matches!(spec, ListenerSpec::Tcp { tls: Some(_), .. }) {
                return Err(main_src.at(a).err("admin.tls: the admin listener does not take TLS; keep it on loopback or a Unix socket"));
            }
            Some(spec)
        }
        None => None,
    };
    let mut seen_listen: HashMap<String, Loc> = HashMap::new();
    for (spec, raw) in listeners
        .iter()
        .chain(admin.iter())
        .zip(main.listeners.iter().chain(main.admin.iter()))
    {
        let key = spec.describe().replace("https://", "http://");
        let loc = main_src.at(raw);
        if let Some(prev) = seen_listen.insert(key.clone(), loc.clone()) {
            return Err(loc.err(format!(
                "listeners: {key} is already used by the listener at {}",
                prev.desc()
            )));
        }
    }

    Ok((listeners, admin))
}

pub(super) fn compile_server(src: &Source, main: &MainFile) -> Result<ServerSettings, ConfigError> {
    let s = &main.server;
    let threads = match &s.threads {
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        Some(t) if t.value == 0 || t.value > 1024 => {
            return Err(src.at(t).err("server.threads: must be between 1 and 1024"))
        }
        Some(t) => t.value,
    };
    Ok(ServerSettings {
        threads,
        pid_file: s
            .pid_file
            .clone()
            .unwrap_or_else(|| "/tmp/portcullis-gateway.pid".into()),
        upgrade_sock: s
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| "/tmp/portcullis-gateway-upgrade.sock".into()),
        grace_period_seconds: dur(
            src,
            &s.grace_period,
            "server.grace_period",
            Duration::from_secs(5),
        )?
        .as_secs(),
        graceful_shutdown_timeout_seconds: dur(
            src,
            &s.graceful_shutdown_timeout,
            "server.graceful_shutdown_timeout",
            Duration::from_secs(5),
        )?
        .as_secs(),
        upstream_keepalive_pool: s.upstream_keepalive_pool.unwrap_or(128),
        // Off by default: each connection then stays on one thread (like nginx workers),
        // which measured less CPU per request (bench/findings.md item 1).
        work_stealing: s.work_stealing.unwrap_or(false),
    })
}

fn compile_listener(
    src: &Source,
    l: &Spanned<ListenerFile>,
    key: &str,
) -> Result<ListenerSpec, ConfigError> {
    let v = &l.value;
    match (&v.address, &v.unix) {
        (Some(a), None) => {
            if v.mode.is_some() {
                return Err(src.at(l).err(format!(
                    "{key}.mode: only Unix socket listeners take a mode"
                )));
            }
            let addr: SocketAddr = a.value.parse().map_err(|_| {
                src.at(a).err(format!(
                    "{key}.address: {:?} is not an ip:port address",
                    a.value
                ))
            })?;
            let tls = match &v.tls {
                None => None,
                Some(t) => Some(compile_listener_tls(src, t, key)?),
            };
            Ok(ListenerSpec::Tcp {
                addr: addr.to_string(),
                tls,
            })
        }
        (None, Some(u)) => {
            if v.tls.is_some() {
                return Err(src
                    .at(l)
                    .err(format!("{key}.tls: TLS is only supported on TCP listeners")));
            }
            let mode = match &v.mode {
                None => None,
                Some(m) => Some(
                    u32::from_str_radix(m.value.trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|&m| m <= 0o777)
                        .ok_or_else(|| {
                            src.at(m).err(format!(
                                "{key}.mode: {:?} is not an octal file mode such as \"0660\"",
                                m.value
                            ))
                        })?,
                ),
            };
            Ok(ListenerSpec::Unix {
                path: src.resolve(&u.value),
                mode,
            })
        }
        _ => Err(src.at(l).err(format!(
            "{key}: give exactly one of `address` (TCP) or `unix` (socket path)"
        ))),
    }
}

fn compile_listener_tls(
    src: &Source,
    t: &Spanned<file::TlsFile>,
    key: &str,
) -> Result<TlsSpec, ConfigError> {
    let cert = src.resolve(&t.value.cert.value);
    let keyp = src.resolve(&t.value.key.value);
    let self_signed = t.value.self_signed;
    if !(self_signed && !cert.exists() && !keyp.exists()) {
        check_cert_chain(&cert).map_err(|e| {
            src.at(&t.value.cert)
                .err(format!("{key}.tls.cert: {}: {e}", cert.display()))
        })?;
        check_private_key(&keyp).map_err(|e| {
            src.at(&t.value.key)
                .err(format!("{key}.tls.key: {}: {e}", keyp.display()))
        })?;
    }
    Ok(TlsSpec {
        cert,
        key: keyp,
        http2: t.value.http2,
        self_signed,
    })
}

/// Reads a PEM file and returns its certificates (DER), checking each parses as X.509.
pub(super) fn read_cert_chain(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut out = Vec::new();
    for c in rustls_pemfile::certs(&mut data.as_slice()) {
        let der = c.map_err(|e| format!("invalid PEM: {e}"))?;
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("invalid certificate: {e}"))?;
        out.push(der.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(out)
}

fn check_cert_chain(path: &Path) -> Result<(), String> {
    read_cert_chain(path).map(|_| ())
}

fn check_private_key(path: &Path) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    match rustls_pemfile::private_key(&mut data.as_slice()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("no PEM private key found".into()),
        Err(e) => Err(format!("invalid PEM: {e}")),
    }
}
