//! The on-disk YAML format, exactly as users write it.
//!
//! Nothing here is validated beyond what serde checks (types and unknown keys); the
//! [`super::compile`] step turns these structs into the internal [`super::GatewayConfig`].
//! Fields that later checks must point at are wrapped in [`Spanned`] so an error can name
//! the line they came from.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// `config/gateway.yaml`: everything, including `include:` of route files.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainFile {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenerFile>>,
    pub admin: Option<Spanned<ListenerFile>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    pub access_log: AccessLogFile,
    #[serde(default)]
    pub headers: HeadersFile,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamFile>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteFile>>,
    #[serde(default)]
    pub include: Vec<Spanned<String>>,
    #[serde(default)]
    pub issuers: Vec<Spanned<IssuerFile>>,
    #[serde(default)]
    pub auth: AuthSettingsFile,
}

/// A trusted token issuer and where its keys come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    /// Label for routes, metrics and logs.
    pub name: Spanned<String>,
    /// The exact `iss` value of its tokens.
    pub issuer: Spanned<String>,
    /// `http(s)://…` or `unix:/path.sock:/jwks/path`.
    pub jwks_url: Option<Spanned<String>>,
    /// Find `jwks_uri` through OIDC discovery from `issuer`.
    #[serde(default)]
    pub discovery: bool,
    /// A local JWKS or PEM public key file.
    pub key_file: Option<Spanned<String>>,
    /// A file holding an HMAC secret (HS256/384/512).
    pub hmac_secret_file: Option<Spanned<String>>,
    /// Allowed algorithms.
    pub algorithms: Option<Vec<Spanned<String>>>,
    /// Default audiences; a token must name one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowance.
    pub leeway: Option<Spanned<DurationValue>>,
    /// Accepted `typ` header values; `[]` turns the check off.
    pub typ: Option<Vec<String>>,
    /// Readiness waits for this issuer's keys (default true).
    pub required: Option<bool>,
    #[serde(default)]
    pub refresh: RefreshFile,
    /// The issuer's revocation feed.
    pub revocation: Option<Spanned<RevocationFile>>,
}

/// An issuer's revocation feed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationFile {
    /// The feed URL; absent: `revocation_feed_endpoint` from the issuer's discovery document.
    pub url: Option<Spanned<String>>,
    /// The file holding the feed credential.
    pub token_file: Option<Spanned<String>>,
    /// How long the feed may go unread.
    pub max_stale: Option<Spanned<DurationValue>>,
    /// `accept` or `refuse` once stale.
    pub on_stale: Option<Spanned<String>>,
    /// Limit of one read.
    pub timeout: Option<Spanned<DurationValue>>,
}

/// JWKS refresh bounds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshFile {
    pub min: Option<Spanned<DurationValue>>,
    pub max: Option<Spanned<DurationValue>>,
    pub default: Option<Spanned<DurationValue>>,
    pub retry: Option<Spanned<DurationValue>>,
    pub unknown_kid_cooldown: Option<Spanned<DurationValue>>,
    pub negative_kid_ttl: Option<Spanned<DurationValue>>,
    pub max_stale: Option<Spanned<DurationValue>>,
    pub timeout: Option<Spanned<DurationValue>>,
    pub max_size: Option<Spanned<SizeValue>>,
}

/// Process-wide token verification settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettingsFile {
    pub max_token_size: Option<Spanned<SizeValue>>,
    pub cache_entries: Option<u64>,
    pub cache_max_bytes: Option<Spanned<SizeValue>>,
    pub realm: Option<Spanned<String>>,
    pub verify_path: Option<Spanned<String>>,
    /// Exit at start when a required issuer's keys cannot be fetched (default: start, and
    /// keep `/readyz` failing until they arrive; their routes answer 401 meanwhile).
    pub require_keys_at_start: Option<bool>,
}

/// A file pulled in by `include:` (usually `conf.d/*.yaml`): routes and upstreams only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncludeFile {
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamFile>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteFile>>,
}

/// Process-level settings; changing them needs a restart or graceful upgrade.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub threads: Option<Spanned<usize>>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub grace_period: Option<Spanned<DurationValue>>,
    pub graceful_shutdown_timeout: Option<Spanned<DurationValue>>,
    pub upstream_keepalive_pool: Option<usize>,
    pub work_stealing: Option<bool>,
    /// Request and connection limits (nginx-like defaults).
    #[serde(default)]
    pub limits: LimitsFile,
    /// Rate and concurrency limits of every route that sets no `limit:` of its own.
    #[serde(default)]
    pub limit: Vec<Spanned<LimitFile>>,
}

/// `server.limits`: request-head bounds, body size, timeouts, connection cap.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_uri_length: Option<Spanned<SizeValue>>,
    pub max_header_line: Option<Spanned<SizeValue>>,
    pub max_head_size: Option<Spanned<SizeValue>>,
    pub max_headers: Option<Spanned<u64>>,
    pub max_body_size: Option<Spanned<SizeValue>>,
    pub client_header_timeout: Option<Spanned<DurationValue>>,
    pub client_body_timeout: Option<Spanned<DurationValue>>,
    pub keepalive_timeout: Option<Spanned<DurationValue>>,
    pub keepalive_requests: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    pub rate_limit_keys: Option<Spanned<u64>>,
}

/// One `limit:` entry: a rate (`rate` + `burst`) or a concurrency bound, counted per `key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitFile {
    pub name: Option<Spanned<String>>,
    /// `ip`, `subject`, `session`, `client`, `claim:<path>` or `header:<name>`.
    pub key: Spanned<String>,
    /// `10r/s`, `600r/m`, `100r/h`.
    pub rate: Option<Spanned<String>>,
    pub burst: Option<Spanned<u64>>,
    /// Requests in flight at once per key.
    pub concurrency: Option<Spanned<u64>>,
}

/// A downstream listener: TCP (`address`) or Unix socket (`unix`), optionally TLS.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub address: Option<Spanned<String>>,
    pub unix: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub tls: Option<Spanned<TlsFile>>,
}

/// Certificate and key of a TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default = "yes")]
    pub http2: bool,
    /// Generate a self-signed certificate at these paths when they do not exist (dev only).
    #[serde(default)]
    pub self_signed: bool,
}

fn yes() -> bool {
    true
}

/// Where and how access log lines are written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    pub format: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub enabled: Option<bool>,
}

/// Names of the headers the gateway owns.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersFile {
    pub identity_prefix: Option<Spanned<String>>,
    pub request_id: Option<Spanned<String>>,
    /// A file with a secret shared with upstreams: identity headers get an HMAC signature.
    pub signature_secret_file: Option<Spanned<String>>,
}

/// A named group of backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub backends: Vec<Spanned<String>>,
    pub tls: Option<Spanned<UpstreamTlsFile>>,
    pub health_check: Option<Spanned<HealthCheckFile>>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<Spanned<DurationValue>>,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    pub retries: Option<u32>,
}

/// TLS towards `https://` backends.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    pub ca_file: Option<Spanned<String>>,
    pub sni: Option<String>,
    pub verify: Option<bool>,
}

/// Active health check of every backend in a group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<String>,
    pub interval: Option<Spanned<DurationValue>>,
    pub timeout: Option<Spanned<DurationValue>>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

/// Upstream timeouts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub connect: Option<Spanned<DurationValue>>,
    pub read: Option<Spanned<DurationValue>>,
    pub write: Option<Spanned<DurationValue>>,
    pub idle: Option<Spanned<DurationValue>>,
}

/// One route rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Spanned<String>,
    #[serde(rename = "match", default)]
    pub matcher: MatchFile,
    pub auth: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    #[serde(rename = "return")]
    pub fixed: Option<Spanned<String>>,
    pub strip_prefix: Option<Spanned<String>>,
    pub rewrite: Option<Spanned<RewriteFile>>,
    pub host_header: Option<Spanned<String>>,
    #[serde(default)]
    pub request_headers: HeaderOpsFile,
    #[serde(default)]
    pub response_headers: HeaderOpsFile,
    pub max_body_size: Option<Spanned<SizeValue>>,
    /// Longest pause between two body reads (default `server.limits.client_body_timeout`).
    pub client_body_timeout: Option<Spanned<DurationValue>>,
    /// Rate and concurrency limits (replace `server.limit`; `[]` turns them off).
    pub limit: Option<Vec<Spanned<LimitFile>>>,
    /// Issuer names accepted on this route (default: all).
    #[serde(default)]
    pub issuers: Vec<Spanned<String>>,
    /// Audiences (replace the issuer's defaults).
    pub audiences: Option<Vec<String>>,
    pub scopes: Option<Spanned<RequirementFile>>,
    pub roles: Option<Spanned<RequirementFile>>,
    #[serde(default)]
    pub claims: Vec<Spanned<ClaimRuleFile>>,
    #[serde(default)]
    pub amr: Vec<String>,
    pub max_age: Option<Spanned<DurationValue>>,
    #[serde(default)]
    pub token: TokenSourcesFile,
    #[serde(default)]
    pub forward_token: bool,
    #[serde(default)]
    pub claim_headers: BTreeMap<String, Spanned<String>>,
    /// How array claims become header values: a separator (default ",") or `json`.
    pub claim_arrays: Option<Spanned<String>>,
    /// Browsers (Accept: text/html) without a valid token are sent here; `{uri}` is
    /// replaced by the percent-encoded original request URI.
    pub login_redirect: Option<Spanned<String>>,
    pub cors: Option<Spanned<CorsFile>>,
}

/// Per-route CORS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    pub origins: Vec<String>,
    pub methods: Option<Vec<String>>,
    pub headers: Option<Vec<String>>,
    pub max_age: Option<Spanned<DurationValue>>,
    #[serde(default)]
    pub credentials: bool,
}

/// `{all: [...]}` or `{any: [...]}`; a plain list means all.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RequirementFile {
    List(Vec<String>),
    Set(RequirementSetFile),
}

/// The map form of a requirement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementSetFile {
    pub all: Option<Vec<String>>,
    pub any: Option<Vec<String>>,
}

/// One claim rule: `claim` plus exactly one test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRuleFile {
    pub claim: String,
    pub equals: Option<serde_json::Value>,
    pub one_of: Option<Vec<serde_json::Value>>,
    pub regex: Option<String>,
    pub exists: Option<bool>,
    pub contains: Option<serde_json::Value>,
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

/// Where a route looks for the token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSourcesFile {
    /// `Authorization: Bearer` (default true).
    pub header: Option<bool>,
    /// Cookie name.
    pub cookie: Option<String>,
    /// Query parameter name (removed before forwarding).
    pub query: Option<String>,
}

/// What a route matches on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<PathMatchFile>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
}

/// `path: {exact: …}`, `{prefix: …}` or `{regex: …}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum PathMatchFile {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// `rewrite: {regex: "^/old/(.*)", replacement: "/new/$1"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteFile {
    pub regex: String,
    pub replacement: String,
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsFile {
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub add: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

/// A duration as written (`250ms`, `5s`, `2m`, `1h`, `7d`, or a bare number of seconds); parsed by
/// the compiler so that errors can name the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationValue(pub String);

/// A byte size as written (`512`, `64k`, `10m`, `1g`); parsed by the compiler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeValue(pub String);

/// Accepts a YAML integer or string and keeps its text.
struct ScalarText(&'static str);

impl Visitor<'_> for ScalarText {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarText("a duration such as 250ms, 5s, 2m, 1h or 7d"))
            .map(DurationValue)
    }
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarText("a size such as 512, 64k, 10m or 1g"))
            .map(SizeValue)
    }
}

pub use portcullis_common::units::{parse_duration, parse_size};
