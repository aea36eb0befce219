//! Compiling the token-verification parts of the config: trusted issuers, process-wide auth
//! settings, and each route's policy.

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::Algorithm;
use regex::Regex;
use serde_saphyr::Spanned;

use super::file::{self, AuthSettingsFile, ClaimRuleFile, IssuerFile, RequirementFile, RouteFile};
use super::{dur, ConfigError, Source};
use crate::auth::identity::IdentityPrefix;
use crate::auth::policy::{ClaimRule, ClaimTest, Requirement, RoutePolicy, TokenSources};
use crate::jwks::{self, KeySource, RefreshPolicy};
use crate::routing::AuthMode;
use crate::verify::canonical_typ;

/// Process-wide verification settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// `realm` in `WWW-Authenticate`.
    pub realm: String,
    /// Path of the `auth_request`-style verify endpoint (None: off).
    pub verify_path: Option<String>,
    /// Tokens larger than this are refused before any parsing.
    pub max_token_size: usize,
    /// Verified-token cache bound (applies from start; a reload keeps the running cache).
    pub cache_entries: u64,
    /// Verified-token cache bound in (approximate) bytes, whichever bound is reached first.
    pub cache_max_bytes: u64,
    /// Exit at start if a required issuer's keys cannot be fetched.
    pub require_keys_at_start: bool,
}

pub(super) fn compile_settings(
    src: &Source,
    a: &AuthSettingsFile,
) -> Result<AuthSettings, ConfigError> {
    let verify_path = match &a.verify_path {
        None => Some("/_portcullis/verify".to_string()),
        Some(p) if p.value.is_empty() || p.value == "off" => None,
        Some(p) => {
            if !p.value.starts_with('/')
                || crate::routing::path::normalize(&p.value).ok().as_deref()
                    != Some(p.value.as_str())
            {
                return Err(src.at(p).err("auth.verify_path: must be a normalised absolute path such as /_portcullis/verify"));
            }
            Some(p.value.clone())
        }
    };
    let max_token_size = match &a.max_token_size {
        None => 8 * 1024,
        Some(m) => file::parse_size(&m.value.0)
            .map_err(|e| src.at(m).err(format!("auth.max_token_size: {e}")))?
            as usize,
    };
    let cache_max_bytes = match &a.cache_max_bytes {
        None => 64 << 20,
        Some(m) => file::parse_size(&m.value.0)
            .map_err(|e| src.at(m).err(format!("auth.cache_max_bytes: {e}")))?
            .max(1),
    };
    let realm = match &a.realm {
        None => "portcullis".to_string(),
        Some(r)
            if r.value
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\') =>
        {
            r.value.clone()
        }
        Some(r) => {
            return Err(src
                .at(r)
                .err("auth.realm: printable ASCII without quotes or backslashes"))
        }
    };
    Ok(AuthSettings {
        realm,
        verify_path,
        max_token_size,
        cache_entries: a.cache_entries.unwrap_or(100_000).max(1),
        cache_max_bytes,
        require_keys_at_start: a.require_keys_at_start.unwrap_or(false),
    })
}

fn parse_algorithm(s: &Spanned<String>, src: &Source, key: &str) -> Result<Algorithm, ConfigError> {
    let alg = s
        .value
        .parse::<Algorithm>()
        .ok()
        .filter(|a| format!("{a:?}") == s.value)
        .ok_or_else(|| src.at(s).err(format!("{key}: {:?} is not one of RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512", s.value)))?;
    Ok(alg)
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// A trusted issuer as configured: plain data; the runtime builds its live keys and the
/// verifier from it.
#[derive(Debug, Clone)]
pub struct IssuerSpec {
    /// Config label.
    pub name: String,
    /// Exact `iss`.
    pub iss: String,
    /// Where its keys come from (key files and secrets are already loaded).
    pub source: KeySource,
    /// Refresh and safety bounds for remote keys.
    pub refresh: RefreshPolicy,
    /// Identity of a remote key source: a reload reuses its live keys while this is unchanged;
    /// None for static keys.
    pub source_id: Option<String>,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Default audiences.
    pub audiences: Vec<String>,
    /// Clock skew allowance in seconds.
    pub leeway: u64,
    /// Accepted `typ` values, canonical.
    pub typ: Vec<String>,
    /// Whether readiness waits for its keys.
    pub required: bool,
}

/// Identity of an issuer's remote key source: a reload reuses its live keys when unchanged.
fn source_identity(name: &str, iss: &str, url: &str, policy: &RefreshPolicy) -> String {
    format!("{name}\u{0}{iss}\u{0}{url}\u{0}{policy:?}")
}

pub(super) fn compile_issuers(
    src: &Source,
    list: &[Spanned<IssuerFile>],
) -> Result<Vec<IssuerSpec>, ConfigError> {
    let mut out = Vec::new();
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut isses: HashMap<&str, String> = HashMap::new();
    for i in list {
        let v = &i.value;
        let loc = src.at(i);
        let key = format!("issuers[{}]", v.name.value);
        if v.name.value.is_empty()
            || !v
                .name
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(src
                .at(&v.name)
                .err("issuers.name: use letters, digits and - _ ."));
        }
        if let Some(prev) = names.insert(&v.name.value, loc.desc()) {
            return Err(src.at(&v.name).err(format!(
                "issuers.name: {:?} is already defined at {prev}",
                v.name.value
            )));
        }
        if v.issuer.value.is_empty() {
            return Err(src
                .at(&v.issuer)
                .err(format!("{key}.issuer: the exact `iss` value is required")));
        }
        if let Some(prev) = isses.insert(&v.issuer.value, loc.desc()) {
            return Err(src.at(&v.issuer).err(format!(
                "{key}.issuer: {:?} is already trusted at {prev}",
                v.issuer.value
            )));
        }
        let r = &v.refresh;
        let policy = RefreshPolicy {
            min_refresh: dur(
                src,
                &r.min,
                &format!("{key}.refresh.min"),
                Duration::from_secs(60),
            )?,
            max_refresh: dur(
                src,
                &r.max,
                &format!("{key}.refresh.max"),
                Duration::from_secs(3600),
            )?,
            default_refresh: dur(
                src,
                &r.default,
                &format!("{key}.refresh.default"),
                Duration::from_secs(300),
            )?,
            retry_after_failure: dur(
                src,
                &r.retry,
                &format!("{key}.refresh.retry"),
                Duration::from_secs(10),
            )?,
            unknown_kid_cooldown: dur(
                src,
                &r.unknown_kid_cooldown,
                &format!("{key}.refresh.unknown_kid_cooldown"),
                Duration::from_secs(30),
            )?,
            negative_kid_ttl: dur(
                src,
                &r.negative_kid_ttl,
                &format!("{key}.refresh.negative_kid_ttl"),
                Duration::from_secs(60),
            )?,
            max_stale: dur(
                src,
                &r.max_stale,
                &format!("{key}.refresh.max_stale"),
                Duration::from_secs(24 * 3600),
            )?,
            fetch_timeout: dur(
                src,
                &r.timeout,
                &format!("{key}.refresh.timeout"),
                Duration::from_secs(5),
            )?,
            max_response_bytes: match &r.max_size {
                None => 256 * 1024,
                Some(m) => file::parse_size(&m.value.0)
                    .map_err(|e| src.at(m).err(format!("{key}.refresh.max_size: {e}")))?
                    as usize,
            },
        };
        if policy.min_refresh > policy.max_refresh {
            return Err(loc.err(format!("{key}.refresh: min is larger than max")));
        }
        let sources = [
            v.jwks_url.is_some(),
            v.discovery,
            v.key_file.is_some(),
            v.hmac_secret_file.is_some(),
        ];
        if sources.iter().filter(|&&s| s).count() != 1 {
            return Err(loc.err(format!("{key}: give exactly one key source: jwks_url, discovery: true, key_file or hmac_secret_file")));
        }
        let hmac_source = v.hmac_secret_file.is_some();
        let algorithms = match &v.algorithms {
            None if hmac_source => vec![Algorithm::HS256],
            None => vec![Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA],
            Some(list) => {
                let mut algs = Vec::new();
                for a in list {
                    let alg = parse_algorithm(a, src, &format!("{key}.algorithms"))?;
                    // Mixing HMAC with public-key algorithms is how key-confusion attacks start.
                    if is_hmac(alg) != hmac_source {
                        return Err(src.at(a).err(format!(
                            "{key}.algorithms: {} needs {} key source",
                            a.value,
                            if is_hmac(alg) {
                                "an hmac_secret_file"
                            } else {
                                "a public-key (not HMAC)"
                            }
                        )));
                    }
                    algs.push(alg);
                }
                if algs.is_empty() {
                    return Err(loc.err(format!(
                        "{key}.algorithms: at least one algorithm is required"
                    )));
                }
                algs
            }
        };
        let (source, source_id) = if let Some(url) = &v.jwks_url {
            let ok = url.value.starts_with("http://")
                || url.value.starts_with("https://")
                || url.value.starts_with("unix:/");
            if !ok {
                return Err(src.at(url).err(format!(
                    "{key}.jwks_url: use http://, https:// or unix:/path.sock:/path"
                )));
            }
            let id = source_identity(&v.name.value, &v.issuer.value, &url.value, &policy);
            (KeySource::Remote(url.value.clone()), Some(id))
        } else if v.discovery {
            let id = source_identity(&v.name.value, &v.issuer.value, "discovery", &policy);
            (KeySource::Discovery(v.issuer.value.clone()), Some(id))
        } else if let Some(f) = &v.key_file {
            let path = src.resolve(&f.value);
            // The error names the file already.
            let keys = jwks::load_key_file(&path, None)
                .map_err(|e| src.at(f).err(format!("{key}.key_file: {e}")))?;
            (KeySource::Static(keys), None)
        } else if let Some(f) = &v.hmac_secret_file {
            let path = src.resolve(&f.value);
            let raw = std::fs::read(&path).map_err(|e| {
                src.at(f)
                    .err(format!("{key}.hmac_secret_file: {}: {e}", path.display()))
            })?;
            let secret = raw.strip_suffix(b"\n").unwrap_or(&raw);
            let k = jwks::hmac_key(secret, None)
                .map_err(|e| src.at(f).err(format!("{key}.hmac_secret_file: {e}")))?;
            (KeySource::Static(vec![k]), None)
        } else {
            return Err(loc.err(format!("{key}: no key source")));
        };
        out.push(IssuerSpec {
            name: v.name.value.clone(),
            iss: v.issuer.value.clone(),
            source,
            refresh: policy,
            source_id,
            algorithms,
            audiences: v.audiences.clone(),
            leeway: dur(
                src,
                &v.leeway,
                &format!("{key}.leeway"),
                Duration::from_secs(30),
            )?
            .as_secs(),
            typ: v
                .typ
                .clone()
                .unwrap_or_else(|| vec!["at+jwt".to_string()])
                .iter()
                .map(|t| canonical_typ(t))
                .collect(),
            required: v.required.unwrap_or(true),
        });
    }
    Ok(out)
}

fn requirement(
    r: &Spanned<RequirementFile>,
    src: &Source,
    key: &str,
) -> Result<Requirement, ConfigError> {
    let req = match &r.value {
        RequirementFile::List(v) => Requirement::All(v.clone()),
        RequirementFile::Set(s) => match (&s.all, &s.any) {
            (Some(all), None) => Requirement::All(all.clone()),
            (None, Some(any)) => Requirement::Any(any.clone()),
            _ => {
                return Err(src
                    .at(r)
                    .err(format!("{key}: give either `all: [...]` or `any: [...]`")))
            }
        },
    };
    let empty = match &req {
        Requirement::All(v) | Requirement::Any(v) => v.is_empty(),
    };
    if empty {
        return Err(src.at(r).err(format!("{key}: the list is empty")));
    }
    Ok(req)
}

fn claim_rule(c: &Spanned<ClaimRuleFile>, src: &Source) -> Result<ClaimRule, ConfigError> {
    let v = &c.value;
    let path: Vec<String> = v.claim.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(src.at(c).err(format!(
            "claims.claim: {:?} is not a claim path such as app_metadata.plan",
            v.claim
        )));
    }
    let mut tests = Vec::new();
    if let Some(x) = &v.equals {
        tests.push(ClaimTest::Equals(x.clone()));
    }
    if let Some(x) = &v.one_of {
        tests.push(ClaimTest::OneOf(x.clone()));
    }
    if let Some(x) = &v.regex {
        let re = Regex::new(x).map_err(|e| src.at(c).err(format!("claims.regex: {e}")))?;
        tests.push(ClaimTest::Regex(re));
    }
    if let Some(x) = v.exists {
        tests.push(ClaimTest::Exists(x));
    }
    if let Some(x) = &v.contains {
        tests.push(ClaimTest::Contains(x.clone()));
    }
    for (val, make) in [
        (v.gt, ClaimTest::Gt as fn(f64) -> ClaimTest),
        (v.gte, ClaimTest::Gte),
        (v.lt, ClaimTest::Lt),
        (v.lte, ClaimTest::Lte),
    ] {
        if let Some(n) = val {
            tests.push(make(n));
        }
    }
    if tests.len() != 1 {
        return Err(src.at(c).err(
            "claims: each rule takes `claim` and exactly one of equals, one_of, regex, exists, contains, gt, gte, lt, lte",
        ));
    }
    Ok(ClaimRule {
        path,
        test: tests.remove(0),
    })
}

/// Compiles a route's policy keys; `issuers` are the names defined in the config.
/// Compiles a route's CORS block.
pub(super) fn compile_cors(
    src: &Source,
    c: &Spanned<file::CorsFile>,
) -> Result<crate::forwarding::cors::Cors, ConfigError> {
    let v = &c.value;
    if v.origins.is_empty() {
        return Err(src
            .at(c)
            .err("cors.origins: at least one origin (or \"*\") is required"));
    }
    let origins: Vec<String> = v
        .origins
        .iter()
        .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
        .collect();
    if v.credentials && origins.iter().any(|o| o == "*") {
        return Err(src
            .at(c)
            .err("cors: `credentials: true` cannot be combined with origin \"*\""));
    }
    let mut methods = Vec::new();
    for m in v.methods.clone().unwrap_or_else(|| {
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .map(String::from)
            .to_vec()
    }) {
        methods.push(
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                src.at(c)
                    .err(format!("cors.methods: {m:?} is not a method"))
            })?,
        );
    }
    let headers: Vec<String> = v
        .headers
        .clone()
        .unwrap_or_else(|| vec!["authorization".into(), "content-type".into()])
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for h in &headers {
        HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            src.at(c)
                .err(format!("cors.headers: {h:?} is not a header name"))
        })?;
    }
    Ok(crate::forwarding::cors::Cors {
        origins,
        methods,
        headers,
        max_age: dur(src, &v.max_age, "cors.max_age", Duration::from_secs(600))?.as_secs(),
        credentials: v.credentials,
    })
}

pub(super) fn compile_policy(
    src: &Source,
    r: &Spanned<RouteFile>,
    auth: AuthMode,
    issuers: &[IssuerSpec],
    identity: &IdentityPrefix,
) -> Result<RoutePolicy, ConfigError> {
    let v = &r.value;
    let uses_policy = !v.issuers.is_empty()
        || v.audiences.is_some()
        || v.scopes.is_some()
        || v.roles.is_some()
        || !v.claims.is_empty()
        || !v.amr.is_empty()
        || v.max_age.is_some()
        || v.forward_token
        || !v.claim_headers.is_empty()
        || v.token.cookie.is_some()
        || v.token.query.is_some()
        || v.token.header.is_some()
        || v.login_redirect.is_some()
        || v.claim_arrays.is_some();
    if auth == AuthMode::Public && uses_policy {
        return Err(src.at(r).err("auth: token rules (issuers, scopes, roles, claims, …) need `auth: required` or `optional`, not public"));
    }
    let mut names = Vec::new();
    for n in &v.issuers {
        if !issuers.iter().any(|i| i.name == n.value) {
            let known: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
            return Err(src.at(n).err(format!(
                "issuers: {:?} is not a trusted issuer (defined: {})",
                n.value,
                known.join(", ")
            )));
        }
        names.push(n.value.clone());
    }
    let mut claim_headers = Vec::new();
    for (path, name) in &v.claim_headers {
        let header = HeaderName::from_bytes(name.value.as_bytes()).map_err(|_| {
            src.at(name).err(format!(
                "claim_headers: {:?} is not a valid header name",
                name.value
            ))
        })?;
        // Only names under the identity prefix are stripped from clients, so only they are safe.
        if !identity.owns(header.as_str()) {
            return Err(src.at(name).err(format!(
                "claim_headers: {:?} must start with the identity prefix ({}) so clients cannot forge it",
                name.value,
                identity.as_str()
            )));
        }
        let path: Vec<String> = path.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(src.at(name).err("claim_headers: empty claim path segment"));
        }
        claim_headers.push((path, header));
    }
    let mut claims = Vec::new();
    for c in &v.claims {
        claims.push(claim_rule(c, src)?);
    }
    let sources = TokenSources {
        header: v.token.header.unwrap_or(true),
        cookie: v.token.cookie.clone(),
        query: v.token.query.clone(),
    };
    if !sources.header
        && sources.cookie.is_none()
        && sources.query.is_none()
        && auth != AuthMode::Public
    {
        return Err(src
            .at(r)
            .err("token: at least one token source (header, cookie or query) is required"));
    }
    Ok(RoutePolicy {
        issuers: names,
        audiences: v.audiences.clone(),
        scopes: v
            .scopes
            .as_ref()
            .map(|s| requirement(s, src, "scopes"))
            .transpose()?,
        roles: v
            .roles
            .as_ref()
            .map(|s| requirement(s, src, "roles"))
            .transpose()?,
        claims,
        amr: v.amr.clone(),
        max_age: match &v.max_age {
            None => None,
            Some(_) => Some(dur(src, &v.max_age, "max_age", Duration::ZERO)?.as_secs()),
        },
        sources,
        forward_token: v.forward_token,
        claim_headers,
        claim_arrays: match &v.claim_arrays {
            None => crate::auth::policy::ArrayFormat::default(),
            Some(a) if a.value == "json" => crate::auth::policy::ArrayFormat::Json,
            Some(a) if !a.value.is_empty() && a.value.len() <= 8 && a.value.chars().all(|c| c.is_ascii_graphic() || c == ' ') => {
                crate::auth::policy::ArrayFormat::Join(a.value.clone())
            }
            Some(a) => return Err(src.at(a).err("claim_arrays: a separator of 1-8 visible characters (e.g. \",\" or \" \"), or json")),
        },
        login_redirect: match &v.login_redirect {
            None => None,
            Some(l) => {
                let ok = (l.value.starts_with("https://")
                    || l.value.starts_with("http://")
                    || l.value.starts_with('/'))
                    && http::HeaderValue::from_str(&l.value).is_ok();
                if !ok {
                    return Err(src.at(l).err("login_redirect: an absolute http(s) URL or a path, e.g. https://login.example.com/?next={uri}"));
                }
                Some(l.value.clone())
            }
        },
    })
}
