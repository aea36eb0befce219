//! The `auth` section (process-wide verification settings) and the trusted `issuers`,
//! compiled to plain data.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_saphyr::Spanned;

use super::file::{self, AuthSettingsFile, IssuerFile, RefreshFile, RevocationFile};
use super::{dur, ConfigError, Loc, Source};
use crate::jwks::{self, KeySource, RefreshPolicy};
use crate::revocation::{FeedSpec, FeedUrl, StalePolicy};
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
    /// Whether readiness waits for its keys (and its revocation snapshot).
    pub required: bool,
    /// Its revocation feed (the credential is already read).
    pub revocation: Option<FeedSpec>,
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
        let policy = refresh_policy(src, &v.refresh, &key)?;
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
        let algorithms = algorithms(src, v, &key, hmac_source, &loc)?;
        let (source, source_id) = key_source(src, v, &key, &policy, &loc)?;
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
            revocation: match &v.revocation {
                None => None,
                Some(r) => Some(revocation(src, r, &key, &v.issuer.value)?),
            },
        });
    }
    Ok(out)
}

/// An issuer's `revocation` block: where its feed is, the credential (read now), staleness.
fn revocation(
    src: &Source,
    r: &Spanned<RevocationFile>,
    key: &str,
    iss: &str,
) -> Result<FeedSpec, ConfigError> {
    let key = format!("{key}.revocation");
    let v = &r.value;
    let url = match &v.url {
        None => FeedUrl::Discovery(iss.to_owned()),
        Some(u) if u.value.starts_with("http://") || u.value.starts_with("https://") => {
            FeedUrl::Fixed(u.value.clone())
        }
        Some(u) => return Err(src.at(u).err(format!("{key}.url: use http:// or https://"))),
    };
    let Some(file) = &v.token_file else {
        return Err(src.at(r).err(format!(
            "{key}.token_file: required (the file holding the issuer's feed token, e.g. data/secrets/feed-token)"
        )));
    };
    let path = src.resolve(&file.value);
    let raw = std::fs::read_to_string(&path).map_err(|e| {
        src.at(file)
            .err(format!("{key}.token_file: {}: {e}", path.display()))
    })?;
    let token = raw.trim().to_owned();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(src.at(file).err(format!(
            "{key}.token_file: {}: expected one token of printable ASCII",
            path.display()
        )));
    }
    let on_stale = match &v.on_stale {
        None => StalePolicy::Accept,
        Some(s) => match s.value.as_str() {
            "accept" => StalePolicy::Accept,
            "refuse" => StalePolicy::Refuse,
            other => {
                return Err(src
                    .at(s)
                    .err(format!("{key}.on_stale: {other:?} is not accept or refuse")))
            }
        },
    };
    let max_stale = dur(
        src,
        &v.max_stale,
        &format!("{key}.max_stale"),
        Duration::from_secs(60),
    )?;
    let timeout = dur(
        src,
        &v.timeout,
        &format!("{key}.timeout"),
        Duration::from_secs(35),
    )?;
    if timeout < Duration::from_secs(1) || timeout > max_stale {
        let at = v
            .timeout
            .as_ref()
            .map(|t| src.at(t))
            .unwrap_or_else(|| src.at(r));
        return Err(at.err(format!(
            "{key}.timeout: between 1s and max_stale ({max_stale:?}): a read that waits longer than max_stale would make a healthy feed look stale"
        )));
    }
    Ok(FeedSpec {
        url,
        token,
        max_stale,
        on_stale,
        timeout,
    })
}

/// An issuer's `refresh` block: Cache-Control bounds, retry, unknown-kid cooldown, staleness,
/// fetch timeout and size.
fn refresh_policy(src: &Source, r: &RefreshFile, key: &str) -> Result<RefreshPolicy, ConfigError> {
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
    Ok(policy)
}

/// An issuer's `algorithms` (defaults by key kind); HMAC never mixes with public keys.
fn algorithms(
    src: &Source,
    v: &IssuerFile,
    key: &str,
    hmac_source: bool,
    loc: &Loc,
) -> Result<Vec<Algorithm>, ConfigError> {
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
    Ok(algorithms)
}

/// An issuer's one key source: `jwks_url`, `discovery`, `key_file` or `hmac_secret_file`
/// (files are read now), with the identity a reload uses to keep remote keys.
fn key_source(
    src: &Source,
    v: &IssuerFile,
    key: &str,
    policy: &RefreshPolicy,
    loc: &Loc,
) -> Result<(KeySource, Option<String>), ConfigError> {
    let (source, source_id) = if let Some(url) = &v.jwks_url {
        let ok = url.value.starts_with("http://")
            || url.value.starts_with("https://")
            || url.value.starts_with("unix:/");
        if !ok {
            return Err(src.at(url).err(format!(
                "{key}.jwks_url: use http://, https:// or unix:/path.sock:/path"
            )));
        }
        let id = source_identity(&v.name.value, &v.issuer.value, &url.value, policy);
        (KeySource::Remote(url.value.clone()), Some(id))
    } else if v.discovery {
        let id = source_identity(&v.name.value, &v.issuer.value, "discovery", policy);
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
    Ok((source, source_id))
}
