//! `config/issuer.yaml`: the file format and its validated, compiled form.

pub mod email;
pub mod limits;
pub mod oauth;
pub mod proxies;
pub mod revocation;
pub mod sms;
pub(crate) mod units;

pub(crate) use units::parse_duration;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use portcullis_common::config::ConfigError;

/// `password.max_length` when the file does not set it (the OpenAPI document states it).
pub(crate) const DEFAULT_PASSWORD_MAX: usize = 128;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    listen: Option<Spanned<String>>,
    admin_listen: Option<Spanned<String>>,
    database_url: Option<Spanned<String>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    sqlite_synchronous: Option<Spanned<String>>,
    issuer: Option<Spanned<String>>,
    #[serde(default)]
    audiences: Vec<String>,
    access_token_ttl: Option<Spanned<String>>,
    #[serde(default)]
    refresh: RefreshFile,
    #[serde(default)]
    keys: KeysFile,
    #[serde(default)]
    password: PasswordFile,
    #[serde(default)]
    signup: Toggle,
    #[serde(default)]
    anonymous: Toggle,
    #[serde(default)]
    secrets: SecretsFile,
    #[serde(default)]
    email: crate::config::email::EmailFile,
    sms: Option<crate::config::sms::SmsFile>,
    #[serde(default)]
    limits: limits::LimitsFile,
    #[serde(default)]
    oauth: crate::config::oauth::OAuthFile,
    #[serde(default)]
    revocation_feed: revocation::RevocationFeedFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshFile {
    reuse_grace: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    absolute_lifetime: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    algorithm: Option<Spanned<String>>,
    publish_lead_time: Option<Spanned<String>>,
    rotate_every: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordFile {
    min_length: Option<usize>,
    max_length: Option<Spanned<usize>>,
    memory_kib: Option<u32>,
    iterations: Option<u32>,
    parallelism: Option<u32>,
    max_concurrent_hashes: Option<usize>,
    max_failures_per_account: Option<i64>,
    max_failures_per_ip: Option<i64>,
    failure_window: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Toggle {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    /// Directory where generated secrets (admin token, API-key pepper, key-encryption key) live.
    dir: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Public API listener.
    pub listen: SocketAddr,
    /// Admin API listener (loopback by default).
    pub admin_listen: SocketAddr,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed (default: nobody).
    pub trusted_proxies: proxies::TrustedProxies,
    /// Durability of SQLite commits (`sqlite_synchronous: full | normal`).
    pub sqlite_sync: crate::store::SqliteSync,
    /// `iss` of every token, and the base of discovery URLs.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audiences: Vec<String>,
    /// Access token lifetime.
    pub access_ttl: Duration,
    /// Grace period in which a rotated refresh token may be presented again.
    pub refresh_reuse_grace: Duration,
    /// Sessions unused this long expire.
    pub session_idle: Duration,
    /// Sessions expire this long after login whatever happens.
    pub session_lifetime: Duration,
    /// Signing algorithm for new keys.
    pub key_alg: String,
    /// A new key is published this long before it signs (≥ the gateways' JWKS refresh).
    pub key_publish_lead: Duration,
    /// Automatic rotation period (None: manual only).
    pub key_rotate_every: Option<Duration>,
    /// Password rules.
    pub password_min: usize,
    /// Maximum password length (at least 64).
    pub password_max: usize,
    /// argon2id memory in KiB.
    pub argon_memory_kib: u32,
    /// argon2id iterations.
    pub argon_iterations: u32,
    /// argon2id lanes.
    pub argon_parallelism: u32,
    /// Password hashes computed at once (the rest wait).
    pub max_concurrent_hashes: usize,
    /// Failed logins per account per window before 429.
    pub max_failures_per_account: i64,
    /// Failed logins per client IP per window before 429.
    pub max_failures_per_ip: i64,
    /// Failure counting window.
    pub failure_window: Duration,
    /// `POST /v1/users` open to the public.
    pub signup_enabled: bool,
    /// `POST /v1/auth/anonymous` open.
    pub anonymous_enabled: bool,
    /// Directory of generated secrets.
    pub secrets_dir: PathBuf,
    /// Email flows and the mailer (`email:`).
    pub email: crate::config::email::EmailConfig,
    /// SMS one-time-code login (`sms:`; absent: off).
    pub sms: Option<crate::config::sms::SmsConfig>,
    /// Budgets of the `limits:` section.
    pub limits: limits::LimitsConfig,
    /// OAuth clients (`oauth:`).
    pub oauth: crate::config::oauth::OAuthConfig,
    /// The revocation feed (`revocation_feed:`).
    pub revocation_feed: revocation::RevocationFeedConfig,
}

impl IssuerConfig {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<IssuerConfig, ConfigError> {
        let file = path.display().to_string();
        let f: FileFormat = portcullis_common::config::read_yaml(path)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let at = |s: &Spanned<String>, message: String| ConfigError::at(&file, s, message);
        let addr = |v: &Option<Spanned<String>>,
                    key: &str,
                    default: &str|
         -> Result<SocketAddr, ConfigError> {
            match v {
                None => Ok(default
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))),
                Some(s) => s
                    .value
                    .parse()
                    .map_err(|_| at(s, format!("{key}: {:?} is not an ip:port address", s.value))),
            }
        };
        let dur = |v: &Option<Spanned<String>>,
                   key: &str,
                   default: Duration|
         -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) => parse_duration(&s.value).map_err(|e| at(s, format!("{key}: {e}"))),
            }
        };
        let database_url = match &f.database_url {
            None => format!("sqlite://{}", dir.join("../data/issuer.db").display()),
            Some(u)
                if u.value.starts_with("postgres://") || u.value.starts_with("postgresql://") =>
            {
                u.value.clone()
            }
            Some(u) if u.value == "sqlite::memory:" => u.value.clone(),
            Some(u) => match u.value.strip_prefix("sqlite://") {
                // Relative SQLite paths are relative to this file, like every other path here.
                Some(p) if !p.starts_with('/') => format!("sqlite://{}", dir.join(p).display()),
                Some(_) => u.value.clone(),
                None => {
                    return Err(at(
                        u,
                        "database_url: use sqlite://path or postgres://…".into(),
                    ))
                }
            },
        };
        let sqlite_sync = match &f.sqlite_synchronous {
            None => crate::store::SqliteSync::Full,
            Some(v) if v.value == "full" => crate::store::SqliteSync::Full,
            Some(v) if v.value == "normal" => crate::store::SqliteSync::Normal,
            Some(v) => return Err(at(v, "sqlite_synchronous: use full or normal".into())),
        };
        let issuer = match &f.issuer {
            None => "http://127.0.0.1:8081".to_string(),
            Some(i) if i.value.starts_with("http://") || i.value.starts_with("https://") => {
                i.value.trim_end_matches('/').to_string()
            }
            Some(i) => {
                return Err(at(
                    i,
                    "issuer: an http(s) URL, the `iss` of every token".into(),
                ))
            }
        };
        let key_alg = match &f.keys.algorithm {
            None => "ES256".to_string(),
            Some(a) if ["ES256", "RS256", "EdDSA"].contains(&a.value.as_str()) => a.value.clone(),
            Some(a) => {
                return Err(at(
                    a,
                    format!(
                        "keys.algorithm: {:?} is not one of ES256, RS256, EdDSA",
                        a.value
                    ),
                ))
            }
        };
        let password_max = match &f.password.max_length {
            None => DEFAULT_PASSWORD_MAX,
            Some(m) if m.value >= 64 => m.value,
            Some(m) => {
                return Err(ConfigError::At {
                    file: file.clone(),
                    line: m.referenced.line(),
                    column: m.referenced.column(),
                    message: "password.max_length: at least 64 (NIST 800-63B)".into(),
                })
            }
        };
        let rotate = match &f.keys.rotate_every {
            None => None,
            Some(s) if s.value == "off" => None,
            Some(s) => Some(
                parse_duration(&s.value).map_err(|e| at(s, format!("keys.rotate_every: {e}")))?,
            ),
        };
        let secrets_dir = f
            .secrets
            .dir
            .map(|d| dir.join(d))
            .unwrap_or_else(|| dir.join("../data/secrets"));
        let email = crate::config::email::EmailConfig::compile(f.email, &file, &dir)?;
        let limits = limits::LimitsConfig::compile(f.limits, &file, email.forgot_per_email)?;
        Ok(IssuerConfig {
            listen: addr(&f.listen, "listen", "127.0.0.1:8081")?,
            admin_listen: addr(&f.admin_listen, "admin_listen", "127.0.0.1:8082")?,
            database_url,
            trusted_proxies: proxies::TrustedProxies::compile(&f.trusted_proxies, &file)?,
            sqlite_sync,
            issuer,
            audiences: if f.audiences.is_empty() {
                vec!["demo".into()]
            } else {
                f.audiences
            },
            access_ttl: dur(
                &f.access_token_ttl,
                "access_token_ttl",
                Duration::from_secs(900),
            )?,
            refresh_reuse_grace: dur(
                &f.refresh.reuse_grace,
                "refresh.reuse_grace",
                Duration::from_secs(10),
            )?,
            session_idle: dur(
                &f.refresh.idle_timeout,
                "refresh.idle_timeout",
                Duration::from_secs(7 * 86_400),
            )?,
            session_lifetime: dur(
                &f.refresh.absolute_lifetime,
                "refresh.absolute_lifetime",
                Duration::from_secs(30 * 86_400),
            )?,
            key_alg,
            key_publish_lead: dur(
                &f.keys.publish_lead_time,
                "keys.publish_lead_time",
                Duration::from_secs(600),
            )?,
            key_rotate_every: rotate,
            password_min: f.password.min_length.unwrap_or(8).max(1),
            password_max,
            argon_memory_kib: f.password.memory_kib.unwrap_or(19_456),
            argon_iterations: f.password.iterations.unwrap_or(2),
            argon_parallelism: f.password.parallelism.unwrap_or(1),
            max_concurrent_hashes: f.password.max_concurrent_hashes.unwrap_or(4).max(1),
            max_failures_per_account: f.password.max_failures_per_account.unwrap_or(5),
            max_failures_per_ip: f.password.max_failures_per_ip.unwrap_or(20),
            failure_window: dur(
                &f.password.failure_window,
                "password.failure_window",
                Duration::from_secs(900),
            )?,
            signup_enabled: f.signup.enabled.unwrap_or(true),
            anonymous_enabled: f.anonymous.enabled.unwrap_or(true),
            revocation_feed: f.revocation_feed.compile(&file, &dir, &secrets_dir)?,
            secrets_dir,
            email,
            sms: match f.sms {
                None => None,
                Some(s) => Some(s.compile(&file, &dir)?),
            },
            limits,
            oauth: f.oauth.compile(&file)?,
        })
    }
}

/// Loads `yaml` as a config file in a temporary directory (the section tests' one way in).
#[cfg(test)]
pub(crate) fn test_load(yaml: &str) -> Result<IssuerConfig, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let p = dir.path().join("issuer.yaml");
    std::fs::write(&p, yaml).map_err(|e| e.to_string())?;
    IssuerConfig::load(&p).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_durations_are_whole_seconds() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("2000ms"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("1500ms")
            .unwrap_err()
            .contains("whole seconds"));
    }

    #[test]
    fn defaults_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("issuer.yaml");
        std::fs::write(&p, "").unwrap();
        let c = IssuerConfig::load(&p).unwrap();
        assert_eq!(c.access_ttl, Duration::from_secs(900));
        assert!(c.database_url.starts_with("sqlite://"));
        std::fs::write(&p, "listen: 127.0.0.1:1\nbogus: 1\n").unwrap();
        let e = IssuerConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains(":2:1:") && e.contains("bogus"), "{e}");
        std::fs::write(&p, "access_token_ttl: 5x\n").unwrap();
        let e = IssuerConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("access_token_ttl"), "{e}");
        std::fs::write(&p, "password:\n  max_length: 20\n").unwrap();
        assert!(IssuerConfig::load(&p)
            .unwrap_err()
            .to_string()
            .contains("password.max_length"));
    }

    #[test]
    fn trusted_proxies_default_to_nobody_and_bad_entries_are_located() {
        use std::net::IpAddr;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("issuer.yaml");
        std::fs::write(&p, "").unwrap();
        let c = IssuerConfig::load(&p).unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(
            !c.trusted_proxies.contains(local),
            "the default trusts nobody"
        );
        std::fs::write(&p, "trusted_proxies: [127.0.0.1/32, \"::1\", 10.0.0.0/8]\n").unwrap();
        let c = IssuerConfig::load(&p).unwrap();
        for ip in ["127.0.0.1", "::1", "10.9.8.7", "::ffff:10.0.0.1"] {
            assert!(c.trusted_proxies.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(!c.trusted_proxies.contains("127.0.0.2".parse().unwrap()));
        for (text, line, col, what) in [
            (
                "trusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.0/40\n",
                3,
                5,
                "prefix length",
            ),
            (
                "trusted_proxies: [10.0.0.0/8, gateway.local]\n",
                1,
                31,
                "invalid IP address",
            ),
            ("trusted_proxies: [unix]\n", 1, 19, "TCP only"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = IssuerConfig::load(&p).unwrap_err().to_string();
            let at = format!("issuer.yaml:{line}:{col}: trusted_proxies: ");
            assert!(e.contains(&at) && e.contains(what), "{text:?}: {e}");
        }
    }
}
