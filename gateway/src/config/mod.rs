//! Gateway configuration: load the YAML files, then validate and compile them into the
//! plain structs the request path reads (River's split between file format and config).
//!
//! Every error names the file, the line and the key, so `portcullis-gateway -t` reads like
//! `nginx -t`.

pub mod auth;
pub mod file;
mod limits;

pub use auth::{AuthSettings, IssuerSpec};

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde_saphyr::Spanned;

use crate::headers::{Cidr, HeaderOps, IdentityPrefix, ProxyTrust};
use crate::limits::EdgeLimits;
use crate::path;
use crate::routes::{
    Action, AuthMode, FixedResponse, HostHeader, HostMatch, PathMatch, PathRewrite, Route, Router,
};
use crate::upstream::{
    Backend, BackendAddress, HealthCheck, HealthCheckKind, StateCarry, UpstreamGroup,
};
use file::{
    DurationValue, HeaderOpsFile, IncludeFile, ListenerFile, MainFile, PathMatchFile, RouteFile,
    UpstreamFile,
};

pub use portcullis_common::config::ConfigError;

/// Settings that only a restart or graceful upgrade can change.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Worker threads per service.
    pub threads: usize,
    /// Pid file (used by `-d` and upgrades).
    pub pid_file: String,
    /// Socket over which listeners are handed to the new process during `-u`.
    pub upgrade_sock: String,
    /// Seconds an old process keeps serving after SIGQUIT/SIGTERM.
    pub grace_period_seconds: u64,
    /// Seconds allowed for the final shutdown of runtimes.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Idle upstream connections kept per process.
    pub upstream_keepalive_pool: usize,
    /// Whether idle worker threads take tasks from busy ones (Pingora `work_stealing`).
    pub work_stealing: bool,
}

/// A listening endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerSpec {
    /// TCP, optionally TLS.
    Tcp {
        /// `ip:port`.
        addr: String,
        /// TLS settings.
        tls: Option<TlsSpec>,
    },
    /// Unix domain socket.
    Unix {
        /// Socket path.
        path: PathBuf,
        /// File mode (octal in the config).
        mode: Option<u32>,
    },
}

impl ListenerSpec {
    /// Printable form.
    pub fn describe(&self) -> String {
        match self {
            ListenerSpec::Tcp { addr, tls: None } => format!("http://{addr}"),
            ListenerSpec::Tcp { addr, tls: Some(_) } => format!("https://{addr}"),
            ListenerSpec::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }
}

/// A TLS listener's certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSpec {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Offer HTTP/2 through ALPN.
    pub http2: bool,
    /// Create a self-signed pair when the files are missing.
    pub self_signed: bool,
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// nginx `combined` plus route, upstream, duration and request id.
    Combined,
    /// One JSON object per line.
    Json,
}

/// Access log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSettings {
    /// Whether to log at all.
    pub enabled: bool,
    /// Line format.
    pub format: LogFormat,
    /// File to append to; `None` for stdout.
    pub path: Option<PathBuf>,
}

/// The compiled, validated configuration. Immutable; replaced whole on reload.
pub struct GatewayConfig {
    /// Every file that was read (for `--watch`).
    pub files: Vec<PathBuf>,
    /// Process settings.
    pub server: ServerSettings,
    /// Traffic listeners.
    pub listeners: Vec<ListenerSpec>,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Option<ListenerSpec>,
    /// Trusted proxies.
    pub trust: ProxyTrust,
    /// Access log.
    pub access_log: AccessLogSettings,
    /// Prefix of the headers only the gateway may set.
    pub identity_prefix: IdentityPrefix,
    /// Request id header name.
    pub request_id_header: HeaderName,
    /// The same name as shared bytes: Pingora copies a `HeaderName` on every insert, a
    /// `Bytes` clone is a reference-count increment.
    pub request_id_wire: Bytes,
    /// Upstream groups by name.
    pub upstreams: BTreeMap<String, Arc<UpstreamGroup>>,
    /// Routes.
    pub router: Router,
    /// Token verification settings.
    pub auth: AuthSettings,
    /// Trusted issuers.
    pub issuers: Vec<IssuerSpec>,
    /// Identity header names under the prefix.
    pub identity_names: crate::auth::IdentityHeaderNames,
    /// Secret for `X-Auth-Signature`, shared with upstreams.
    pub signature_key: Option<Vec<u8>>,
    /// Request, connection and timeout limits (`server.limits`).
    pub limits: Arc<EdgeLimits>,
}

/// Routes with equal keys compete for the same requests.
type MatchKey = (HostMatch, u8, String);

/// Where a value came from.
#[derive(Clone)]
struct Loc {
    file: Arc<str>,
    line: u64,
    column: u64,
}

impl Loc {
    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::At {
            file: self.file.to_string(),
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }

    fn desc(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// One parsed file and its location helpers.
struct Source {
    name: Arc<str>,
    dir: PathBuf,
}

impl Source {
    fn at<T>(&self, s: &Spanned<T>) -> Loc {
        Loc {
            file: self.name.clone(),
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }

    /// Relative paths in a file are relative to that file's directory.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

fn read_yaml<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
) -> Result<(Source, T), ConfigError> {
    let value = portcullis_common::config::read_yaml::<T>(path)?;
    let name: Arc<str> = path.display().to_string().into();
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((Source { name, dir }, value))
}

/// Reads `path` and everything it includes, and compiles it.
///
/// `backends` hands over backend health from the running config on reload.
pub fn load(path: &Path, backends: &StateCarry) -> Result<GatewayConfig, ConfigError> {
    let (main_src, main) = read_yaml::<MainFile>(path)?;
    let mut files = vec![path.to_path_buf()];
    let mut includes = Vec::new();
    for pattern in &main.include {
        let loc = main_src.at(pattern);
        let full = main_src.resolve(&pattern.value);
        let full_str = full.display().to_string();
        let has_glob = pattern.value.contains(['*', '?', '[']);
        let mut matched: Vec<PathBuf> = glob::glob(&full_str)
            .map_err(|e| loc.err(format!("include: invalid pattern {:?}: {e}", pattern.value)))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        if matched.is_empty() && !has_glob {
            return Err(loc.err(format!("include: {full_str} does not exist")));
        }
        // Files merge in lexical order, whatever order the file system lists them in.
        matched.sort();
        for f in matched {
            let (src, inc) = read_yaml::<IncludeFile>(&f)?;
            files.push(f);
            includes.push((src, inc));
        }
    }
    let mut cfg = compile(&main_src, main, includes, backends)?;
    cfg.files = files;
    Ok(cfg)
}

/// Parses an optional duration, naming `key` and its line on error.
fn dur(
    src: &Source,
    v: &Option<Spanned<DurationValue>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(d) => {
            file::parse_duration(&d.value.0).map_err(|e| src.at(d).err(format!("{key}: {e}")))
        }
    }
}

fn compile(
    main_src: &Source,
    main: MainFile,
    includes: Vec<(Source, IncludeFile)>,
    backends: &StateCarry,
) -> Result<GatewayConfig, ConfigError> {
    let server = compile_server(main_src, &main)?;
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

    let mut trust = ProxyTrust::default();
    for t in &main.trusted_proxies {
        if t.value.trim() == "unix" {
            trust.unix = true;
            continue;
        }
        let cidr = Cidr::parse(&t.value)
            .map_err(|e| main_src.at(t).err(format!("trusted_proxies: {e}")))?;
        trust.networks.push(cidr);
    }

    let access_log = {
        let a = &main.access_log;
        let format = match &a.format {
            None => LogFormat::Combined,
            Some(f) => match f.value.as_str() {
                "combined" => LogFormat::Combined,
                "json" => LogFormat::Json,
                other => {
                    return Err(main_src.at(f).err(format!(
                        "access_log.format: {other:?} is not one of combined, json"
                    )))
                }
            },
        };
        let path = match &a.path {
            None => None,
            Some(p) if p.value == "stdout" || p.value == "-" => None,
            Some(p) => Some(main_src.resolve(&p.value)),
        };
        AccessLogSettings {
            enabled: a.enabled.unwrap_or(true),
            format,
            path,
        }
    };

    let identity_prefix = match &main.headers.identity_prefix {
        None => IdentityPrefix::new("X-Auth-"),
        Some(p) => {
            if p.value.len() < 2 || HeaderName::from_bytes(p.value.as_bytes()).is_err() {
                return Err(main_src.at(p).err(
                    "headers.identity_prefix: must be a valid header name prefix such as X-Auth-",
                ));
            }
            IdentityPrefix::new(&p.value)
        }
    };
    let request_id_header = match &main.headers.request_id {
        None => HeaderName::from_static("x-request-id"),
        Some(h) => HeaderName::from_bytes(h.value.as_bytes()).map_err(|_| {
            main_src.at(h).err(format!(
                "headers.request_id: {:?} is not a valid header name",
                h.value
            ))
        })?,
    };

    // Upstreams from every file; a name may be defined once.
    let mut upstream_defs: Vec<(&Source, &String, &Spanned<UpstreamFile>)> = Vec::new();
    for (name, u) in &main.upstreams {
        upstream_defs.push((main_src, name, u));
    }
    for (src, inc) in &includes {
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

    let auth_settings = auth::compile_settings(main_src, &main.auth)?;
    let edge = limits::compile_edge(main_src, &main.server.limits, auth_settings.max_token_size)?;
    let mut rule_names = limits::RuleNames::default();
    let default_rules =
        limits::compile_rules(main_src, &main.server.limit, "server", &mut rule_names)?;
    let issuers = auth::compile_issuers(main_src, &main.issuers)?;

    // Routes in merge order: the main file, then included files in lexical order.
    let mut route_defs: Vec<(&Source, &Spanned<RouteFile>)> =
        main.routes.iter().map(|r| (main_src, r)).collect();
    for (src, inc) in &includes {
        route_defs.extend(inc.routes.iter().map(|r| (src, r)));
    }
    let mut routes: Vec<Arc<Route>> = Vec::new();
    let mut names: HashMap<String, Loc> = HashMap::new();
    let mut match_keys: HashMap<MatchKey, Vec<(Vec<Method>, String, String)>> = HashMap::new();
    for (src, r) in route_defs {
        let loc = src.at(&r.value.name);
        if let Some(prev) = names.get(&r.value.name.value) {
            return Err(loc.err(format!(
                "name: route {:?} is already defined at {}",
                r.value.name.value,
                prev.desc()
            )));
        }
        let route_limits = RouteLimits {
            edge: &edge,
            default_rules: &default_rules,
            names: &mut rule_names,
        };
        let route = compile_route(src, r, &upstreams, &identity_prefix, &issuers, route_limits)?;
        let (kind, text) = match &route.path {
            PathMatch::Exact(p) => (0, p.clone()),
            PathMatch::Prefix(p) => (1, p.clone()),
            PathMatch::Regex(re) => (2, re.as_str().to_string()),
        };
        let same = match_keys
            .entry((route.host.clone(), kind, text))
            .or_default();
        for (methods, other, other_loc) in same.iter() {
            let overlap = (methods.is_empty() && route.methods.is_empty())
                || methods.iter().any(|m| route.methods.contains(m));
            if overlap {
                return Err(src.at(r).err(format!(
                    "match: route {:?} has the same host, path and methods as route {other:?} ({other_loc}); which one wins would be ambiguous",
                    route.name
                )));
            }
        }
        same.push((route.methods.clone(), route.name.clone(), loc.desc()));
        names.insert(route.name.clone(), loc);
        routes.push(Arc::new(route));
    }

    let signature_key = match &main.headers.signature_secret_file {
        None => None,
        Some(f) => {
            let path = main_src.resolve(&f.value);
            let raw = std::fs::read(&path).map_err(|e| {
                main_src.at(f).err(format!(
                    "headers.signature_secret_file: {}: {e}",
                    path.display()
                ))
            })?;
            let secret = raw.strip_suffix(b"\n").unwrap_or(&raw).to_vec();
            if secret.len() < 32 {
                return Err(main_src
                    .at(f)
                    .err("headers.signature_secret_file: the secret must be at least 32 bytes"));
            }
            Some(secret)
        }
    };
    Ok(GatewayConfig {
        limits: Arc::new(edge),
        signature_key,
        identity_names: crate::auth::IdentityHeaderNames::new(&identity_prefix),
        auth: auth_settings,
        issuers,
        files: Vec::new(),
        server,
        listeners,
        admin,
        trust,
        access_log,
        identity_prefix,
        request_id_wire: Bytes::copy_from_slice(request_id_header.as_str().as_bytes()),
        request_id_header,
        upstreams,
        router: Router::new(routes),
    })
}

fn compile_server(src: &Source, main: &MainFile) -> Result<ServerSettings, ConfigError> {
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
pub fn read_cert_chain(path: &Path) -> Result<Vec<Vec<u8>>, String> {
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
    let t = &v.timeouts;
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
    let health_check = match &v.health_check {
        None => None,
        Some(h) => {
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
            Some(HealthCheck {
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
    };
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

/// Parses `return:` in nginx style: `200 "ok"`, `204`, `301 https://example.com/`.
fn parse_return(s: &str) -> Result<FixedResponse, String> {
    let s = s.trim();
    let (code, rest) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
    let status: u16 = code
        .parse()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .ok_or_else(|| format!("{code:?} is not a status code between 200 and 599"))?;
    let rest = rest.trim();
    let text = if rest.len() >= 2 && rest.starts_with('"') && rest.ends_with('"') {
        &rest[1..rest.len() - 1]
    } else {
        rest
    };
    if (300..400).contains(&status) && status != 304 {
        if text.is_empty() {
            return Err(format!("a {status} redirect needs a target URL"));
        }
        let location =
            HeaderValue::from_str(text).map_err(|_| format!("{text:?} is not a valid Location"))?;
        return Ok(FixedResponse {
            status,
            body: Bytes::new(),
            location: Some(location),
        });
    }
    Ok(FixedResponse {
        status,
        body: Bytes::from(text.to_string()),
        location: None,
    })
}

fn compile_header_ops(
    src: &Source,
    ops: &HeaderOpsFile,
    key: &str,
    identity: Option<&IdentityPrefix>,
) -> Result<HeaderOps, ConfigError> {
    let name_of = |n: &str, loc: Loc| -> Result<HeaderName, ConfigError> {
        let name = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| loc.err(format!("{key}: {n:?} is not a valid header name")))?;
        if let Some(p) = identity {
            if p.owns(name.as_str()) {
                return Err(loc.err(format!(
                    "{key}: {n:?} is an identity header; only verified tokens may set those"
                )));
            }
        }
        Ok(name)
    };
    let mut out = HeaderOps::default();
    for (list, target) in [(&ops.set, &mut out.set), (&ops.add, &mut out.add)] {
        for (n, v) in list {
            let name = name_of(n, src.at(v))?;
            let value = HeaderValue::from_str(&v.value).map_err(|_| {
                src.at(v)
                    .err(format!("{key}: value of {n:?} is not a valid header value"))
            })?;
            target.push((name, value));
        }
    }
    for n in &ops.remove {
        out.remove.push(name_of(&n.value, src.at(n))?);
    }
    Ok(out)
}

/// What a route's limits are compiled against.
struct RouteLimits<'a> {
    edge: &'a EdgeLimits,
    default_rules: &'a [crate::limits::LimitRule],
    names: &'a mut limits::RuleNames,
}

fn compile_route(
    src: &Source,
    r: &Spanned<RouteFile>,
    upstreams: &BTreeMap<String, Arc<UpstreamGroup>>,
    identity: &IdentityPrefix,
    issuers: &[IssuerSpec],
    lim: RouteLimits<'_>,
) -> Result<Route, ConfigError> {
    let v = &r.value;
    let name = v.name.value.trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    {
        return Err(src
            .at(&v.name)
            .err("name: use letters, digits and - _ . : /"));
    }
    let host = match &v.matcher.host {
        None => HostMatch::Any,
        Some(h) => {
            let lower = h.value.trim().to_ascii_lowercase();
            let (wild, bare) = match lower.strip_prefix("*.") {
                Some(rest) => (true, rest.to_string()),
                None => (false, lower.clone()),
            };
            let valid = !bare.is_empty()
                && bare.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                return Err(src.at(h).err(format!(
                    "match.host: {:?} is not a host name or *.domain wildcard (no port)",
                    h.value
                )));
            }
            if wild {
                HostMatch::Wildcard(format!(".{bare}"))
            } else {
                HostMatch::Exact(bare)
            }
        }
    };
    let path = match &v.matcher.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let loc = src.at(p);
            match &p.value {
                PathMatchFile::Exact(s) | PathMatchFile::Prefix(s) => {
                    let norm = path::normalize(s)
                        .map_err(|e| loc.err(format!("match.path: {s:?}: {e}")))?;
                    if &norm != s
                        && !(matches!(p.value, PathMatchFile::Prefix(_)) && norm == format!("{s}/"))
                    {
                        return Err(loc.err(format!("match.path: {s:?} never matches a normalised request path; write {norm:?}")));
                    }
                    if matches!(p.value, PathMatchFile::Exact(_)) {
                        PathMatch::Exact(s.clone())
                    } else {
                        PathMatch::Prefix(s.clone())
                    }
                }
                PathMatchFile::Regex(s) => PathMatch::Regex(
                    Regex::new(s).map_err(|e| loc.err(format!("match.path.regex: {e}")))?,
                ),
            }
        }
    };
    let mut methods = Vec::new();
    for m in &v.matcher.methods {
        let upper = m.value.trim().to_ascii_uppercase();
        let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
            src.at(m).err(format!(
                "match.methods: {:?} is not an HTTP method",
                m.value
            ))
        })?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    let auth = match &v.auth {
        None => AuthMode::Required,
        Some(a) => match a.value.as_str() {
            "public" => AuthMode::Public,
            "optional" => AuthMode::Optional,
            "required" => AuthMode::Required,
            other => {
                return Err(src.at(a).err(format!(
                    "auth: {other:?} is not one of required, optional, public"
                )))
            }
        },
    };
    let action = match (&v.upstream, &v.fixed) {
        (Some(u), None) => match upstreams.get(&u.value) {
            Some(g) => Action::Proxy(g.clone()),
            None => {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                return Err(src.at(u).err(format!(
                    "upstream: {:?} is not defined (defined: {})",
                    u.value,
                    known.join(", ")
                )));
            }
        },
        (None, Some(f)) => Action::Respond(
            parse_return(&f.value).map_err(|e| src.at(f).err(format!("return: {e}")))?,
        ),
        (Some(_), Some(_)) => {
            return Err(src
                .at(r)
                .err("upstream, return: a route either proxies or returns, not both"))
        }
        (None, None) => {
            return Err(src
                .at(r)
                .err("upstream: missing (or give `return:` for a fixed response)"))
        }
    };
    let rewrite = match (&v.strip_prefix, &v.rewrite) {
        (Some(_), Some(_)) => {
            return Err(src.at(r).err("strip_prefix, rewrite: use one or the other"))
        }
        (Some(p), None) => {
            if !p.value.starts_with('/') {
                return Err(src.at(p).err("strip_prefix: must start with '/'"));
            }
            PathRewrite::StripPrefix(p.value.clone())
        }
        (None, Some(rw)) => {
            let re = Regex::new(&rw.value.regex)
                .map_err(|e| src.at(rw).err(format!("rewrite.regex: {e}")))?;
            PathRewrite::Regex(re, rw.value.replacement.clone())
        }
        (None, None) => PathRewrite::None,
    };
    let host_header = match &v.host_header {
        None => HostHeader::Preserve,
        Some(h) => match h.value.as_str() {
            "preserve" => HostHeader::Preserve,
            "upstream" => HostHeader::Upstream,
            other => HostHeader::Fixed(HeaderValue::from_str(other).map_err(|_| {
                src.at(h).err(format!(
                    "host_header: {other:?} is not a valid header value"
                ))
            })?),
        },
    };
    let policy = auth::compile_policy(src, r, auth, issuers, identity)?;
    let name_for_limits = name.clone();
    let cors = v
        .cors
        .as_ref()
        .map(|c| auth::compile_cors(src, c))
        .transpose()?;
    Ok(Route {
        policy,
        cors,
        name,
        host,
        path,
        methods,
        auth,
        action,
        rewrite,
        host_header,
        request_headers: compile_header_ops(
            src,
            &v.request_headers,
            "request_headers",
            Some(identity),
        )?,
        response_headers: compile_header_ops(src, &v.response_headers, "response_headers", None)?,
        // `0` means unlimited, as in nginx's `client_max_body_size 0`.
        max_body_size: match &v.max_body_size {
            None => lim.edge.max_body_size,
            Some(m) => Some(
                file::parse_size(&m.value.0)
                    .map_err(|e| src.at(m).err(format!("max_body_size: {e}")))?,
            )
            .filter(|&n| n > 0),
        },
        client_body_timeout: {
            let d = dur(
                src,
                &v.client_body_timeout,
                "client_body_timeout",
                lim.edge.client_body_timeout,
            )?;
            if d.is_zero() {
                return Err(src.at(r).err("client_body_timeout: must be more than 0"));
            }
            d
        },
        limits: match &v.limit {
            None => lim.default_rules.to_vec(),
            Some(list) => limits::compile_rules(src, list, &name_for_limits, lim.names)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_forms() {
        let r = parse_return(r#"200 "ok""#).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        let r = parse_return("301 https://example.com/").unwrap();
        assert_eq!(r.location.unwrap(), "https://example.com/");
        assert_eq!(parse_return("204").unwrap().body.len(), 0);
        assert!(parse_return("302").is_err());
        assert!(parse_return("99 x").is_err());
    }

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
