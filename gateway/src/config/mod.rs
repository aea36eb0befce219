//! Gateway configuration: load the YAML files, then validate and compile them into the
//! plain structs the request path reads (River's split between file format and config).
//!
//! Every error names the file, the line and the key, so `portcullis-gateway -t` reads like
//! `nginx -t`.

mod cors;
pub mod file;
mod issuers;
mod limits;
mod listeners;
mod policy;
mod routes;
mod upstreams;

pub use issuers::{AuthSettings, IssuerSpec};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use serde_saphyr::Spanned;

use crate::auth::identity::IdentityPrefix;
use crate::forwarding::client::{Cidr, ProxyTrust};
use crate::limits::EdgeLimits;
use crate::routing::Router;
use crate::upstream::{StateCarry, UpstreamGroup};
use file::{DurationValue, IncludeFile, MainFile};

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

/// Compiles the parsed files, one section after the other; each step returns plain data.
fn compile(
    main_src: &Source,
    main: MainFile,
    includes: Vec<(Source, IncludeFile)>,
    backends: &StateCarry,
) -> Result<GatewayConfig, ConfigError> {
    let server = listeners::compile_server(main_src, &main)?;
    let (listeners, admin) = listeners::compile_listeners(main_src, &main)?;
    let trust = compile_trust(main_src, &main)?;
    let access_log = compile_access_log(main_src, &main)?;
    let (identity_prefix, request_id_header, signature_key) = compile_headers(main_src, &main)?;
    let upstreams = upstreams::compile_upstreams(main_src, &main, &includes, backends)?;
    let auth_settings = issuers::compile_settings(main_src, &main.auth)?;
    let edge = limits::compile_edge(main_src, &main.server.limits, auth_settings.max_token_size)?;
    let mut rule_names = limits::RuleNames::default();
    let default_rules =
        limits::compile_rules(main_src, &main.server.limit, "server", &mut rule_names)?;
    let issuers = issuers::compile_issuers(main_src, &main.issuers)?;
    let routes = routes::compile_routes(
        main_src,
        &main,
        &includes,
        routes::RouteContext {
            upstreams: &upstreams,
            identity: &identity_prefix,
            issuers: &issuers,
            edge: &edge,
            default_rules: &default_rules,
        },
        &mut rule_names,
    )?;
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
/// `trusted_proxies`: the networks whose `X-Forwarded-For` is believed.
fn compile_trust(main_src: &Source, main: &MainFile) -> Result<ProxyTrust, ConfigError> {
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

    Ok(trust)
}

/// `access_log`: format and destination.
fn compile_access_log(
    main_src: &Source,
    main: &MainFile,
) -> Result<AccessLogSettings, ConfigError> {
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

    Ok(access_log)
}

/// `headers`: the identity prefix, the request-id header and the identity signature secret.
fn compile_headers(
    main_src: &Source,
    main: &MainFile,
) -> Result<(IdentityPrefix, HeaderName, Option<Vec<u8>>), ConfigError> {
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
    Ok((identity_prefix, request_id_header, signature_key))
}
