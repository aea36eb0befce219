//! The `limits:` section of `config/issuer.yaml`: the budgets of the endpoints that create
//! accounts, send mail or let a client guess a secret, each
//! `{per_ip: N, per_account: N, per_client: N, global: N, window: 1h}` (the scopes a limit
//! has, each a count ≥ 1 or `off`). Older budgets keep their keys: `password.max_failures_*`,
//! `email.forgot_per_*_per_hour`, `sms.max_*` (see the README's table of every limit).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::units::parse_duration;
use portcullis_common::config::ConfigError;

/// Largest count accepted: with windows up to [`MAX_WINDOW`] the counters' integer
/// arithmetic (count × window seconds) stays far from 64-bit overflow on PostgreSQL.
pub const MAX_COUNT: i64 = 1_000_000_000;

/// Longest window accepted (a year).
pub const MAX_WINDOW: i64 = 366 * 86_400;

const HOUR: i64 = 3_600;
const MINUTE: i64 = 60;

/// At most `max` hits in any sliding window of `window` seconds (see `store/limits.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Hits admitted per window.
    pub max: i64,
    /// Window length in seconds (≥ 1).
    pub window: i64,
}

impl Budget {
    /// `max` per `window`; both clamped to what the counters can hold (the older keys were
    /// never bounded, and a count beyond [`MAX_COUNT`] is "unlimited" in practice).
    pub fn new(max: i64, window: Duration) -> Budget {
        let window = i64::try_from(window.as_secs()).unwrap_or(MAX_WINDOW);
        Budget {
            max: max.clamp(0, MAX_COUNT),
            window: window.clamp(1, MAX_WINDOW),
        }
    }

    /// `max` per hour (the `*_per_hour` keys of `email:` and `sms:`).
    pub fn per_hour(max: i64) -> Budget {
        Budget::new(max, Duration::from_secs(HOUR as u64))
    }
}

/// The budgets of one limit; `None` where the scope is off or does not apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Per client address (`http::client_ip`).
    pub per_ip: Option<Budget>,
    /// Per account (or address, for the mail of one account).
    pub per_account: Option<Budget>,
    /// Per authenticated client (API key id, or the admin token).
    pub per_client: Option<Budget>,
    /// For everyone together.
    pub global: Option<Budget>,
}

/// The validated `limits:` section (defaults and reasons: [`SPECS`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `POST /v1/auth/anonymous`: every new anonymous account.
    pub anonymous: Rule,
    /// `POST /v1/users`: every sign-up attempt that passes validation.
    pub signup: Rule,
    /// `POST /v1/users/confirm/resend`.
    pub confirm_resend: Rule,
    /// Every mail sent (confirmation, email change, password reset).
    pub mail: Rule,
    /// `POST /v1/users/confirm`: link tokens submitted.
    pub email_confirm: Rule,
    /// `POST /v1/password/reset`: link tokens submitted.
    pub password_reset: Rule,
    /// Failed refreshes (`/v1/auth/refresh`, `grant_type=refresh_token`).
    pub refresh: Rule,
    /// `POST /oauth/token`: every grant.
    pub token: Rule,
    /// `POST /oauth/introspect`, per authenticated client.
    pub introspect: Rule,
    /// `POST /oauth/revoke`, per authenticated client.
    pub revoke: Rule,
    /// Failed API-key authentications (logins, `client_credentials`, introspection and
    /// revocation clients).
    pub api_key: Rule,
}

/// One limit's scopes and their defaults (`None`: the scope does not apply to it).
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Its key under `limits:`.
    pub name: &'static str,
    /// Default `per_ip`.
    pub per_ip: Option<i64>,
    /// Default `per_account`.
    pub per_account: Option<i64>,
    /// Default `per_client`.
    pub per_client: Option<i64>,
    /// Default `global`.
    pub global: Option<i64>,
    /// Default `window` (seconds).
    pub window: i64,
}

const NONE: Spec = Spec {
    name: "",
    per_ip: None,
    per_account: None,
    per_client: None,
    global: None,
    window: HOUR,
};

// A device signs in anonymously once per install: 30 an hour leaves room for many devices
// behind one NAT; the ceiling bounds the growth of the users table (24 000 rows a day).
const ANONYMOUS: Spec = Spec {
    name: "anonymous",
    per_ip: Some(30),
    global: Some(1_000),
    ..NONE
};

// A person signs up once; 10 an hour per address covers a shared office. Each sign-up may mail
// a confirmation link: the ceiling bounds what a botnet costs in mail and rows.
const SIGNUP: Spec = Spec {
    name: "signup",
    per_ip: Some(10),
    global: Some(500),
    ..NONE
};

// per_account defaults to `email.forgot_per_email_per_hour` (5), which limited resends before
// this section existed; per_ip stops one client mailing many accounts' addresses.
const CONFIRM_RESEND: Spec = Spec {
    name: "confirm_resend",
    per_ip: Some(20),
    per_account: Some(5),
    ..NONE
};

// Every mail costs money and sender reputation; 1000 an hour is far above what sign-ups,
// changes and resets of a mid-sized service send, and stops a flood at one hour's worth.
const MAIL: Spec = Spec {
    name: "mail",
    global: Some(1_000),
    ..NONE
};

// Link tokens have 256 bits, so guessing is hopeless; these bound the lookups (and, for resets,
// the argon2 work) one address can cause. A person needs two or three tries.
const EMAIL_CONFIRM: Spec = Spec {
    name: "email_confirm",
    per_ip: Some(30),
    ..NONE
};

const PASSWORD_RESET: Spec = Spec {
    name: "password_reset",
    per_ip: Some(20),
    ..NONE
};

// Failed refreshes only (unknown, spent or expired refresh tokens): successful ones of many
// users behind one NAT must not add up. A healthy client fails once, then logs in again.
const REFRESH: Spec = Spec {
    name: "refresh",
    per_ip: Some(60),
    ..NONE
};

// Every grant signs a token and writes a session: 120 a minute per address is far above one
// client's needs (tokens live 15 minutes) and caps a flood at 2 a second.
const TOKEN: Spec = Spec {
    name: "token",
    per_ip: Some(120),
    window: MINUTE,
    ..NONE
};

// Gateways verify access tokens themselves; introspection is for occasional checks: 50 a second
// per client. A resource server introspecting every request should cache the answers.
const INTROSPECT: Spec = Spec {
    name: "introspect",
    per_client: Some(3_000),
    window: MINUTE,
    ..NONE
};

const REVOKE: Spec = Spec {
    name: "revoke",
    per_client: Some(600),
    window: MINUTE,
    ..NONE
};

// Failures only, like password logins: a client with a valid key never meets it; a guesser gets
// 20 tries per 15 minutes per address (keys have 256 bits anyway).
const API_KEY: Spec = Spec {
    name: "api_key",
    per_ip: Some(20),
    window: 15 * MINUTE,
    ..NONE
};

/// Every limit of the section, in file order, with its defaults.
pub const SPECS: [Spec; 11] = [
    ANONYMOUS,
    SIGNUP,
    CONFIRM_RESEND,
    MAIL,
    EMAIL_CONFIRM,
    PASSWORD_RESET,
    REFRESH,
    TOKEN,
    INTROSPECT,
    REVOKE,
    API_KEY,
];

/// `limits:` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    anonymous: Option<RuleFile>,
    signup: Option<RuleFile>,
    confirm_resend: Option<RuleFile>,
    mail: Option<RuleFile>,
    email_confirm: Option<RuleFile>,
    password_reset: Option<RuleFile>,
    refresh: Option<RuleFile>,
    token: Option<RuleFile>,
    introspect: Option<RuleFile>,
    revoke: Option<RuleFile>,
    api_key: Option<RuleFile>,
}

/// One limit as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    per_ip: Option<Spanned<Count>>,
    per_account: Option<Spanned<Count>>,
    per_client: Option<Spanned<Count>>,
    global: Option<Spanned<Count>>,
    window: Option<Spanned<String>>,
}

/// A count as written: a number, `off`, or something else (reported with its line).
#[derive(Debug)]
enum Count {
    Number(i64),
    Off,
    Other(String),
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor)
    }
}

struct CountVisitor;

impl Visitor<'_> for CountVisitor {
    type Value = Count;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a count or `off`")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
        Ok(Count::Number(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
        Ok(Count::Number(i64::try_from(v).unwrap_or(i64::MAX)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
        Ok(Count::Other(v.to_string()))
    }
    // YAML 1.1 reads a bare `off` as false; `true` means nothing here.
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Count, E> {
        Ok(if v {
            Count::Other("true".into())
        } else {
            Count::Off
        })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
        Ok(match v.trim() {
            "off" => Count::Off,
            t => t
                .parse()
                .map(Count::Number)
                .unwrap_or_else(|_| Count::Other(v.to_string())),
        })
    }
}

impl LimitsConfig {
    /// Validates `f`; `file` names the config file in errors. `resend_per_account` is the
    /// default of `confirm_resend.per_account` (`email.forgot_per_email_per_hour`).
    pub fn compile(
        f: LimitsFile,
        file: &str,
        resend_per_account: i64,
    ) -> Result<LimitsConfig, ConfigError> {
        let rule = |spec: &Spec, r: Option<RuleFile>| compile_rule(file, spec, r);
        // The older key keeps working unless this section says otherwise.
        let confirm_resend = Spec {
            per_account: Some(resend_per_account.clamp(1, MAX_COUNT)),
            ..CONFIRM_RESEND
        };
        Ok(LimitsConfig {
            anonymous: rule(&ANONYMOUS, f.anonymous)?,
            signup: rule(&SIGNUP, f.signup)?,
            confirm_resend: rule(&confirm_resend, f.confirm_resend)?,
            mail: rule(&MAIL, f.mail)?,
            email_confirm: rule(&EMAIL_CONFIRM, f.email_confirm)?,
            password_reset: rule(&PASSWORD_RESET, f.password_reset)?,
            refresh: rule(&REFRESH, f.refresh)?,
            token: rule(&TOKEN, f.token)?,
            introspect: rule(&INTROSPECT, f.introspect)?,
            revoke: rule(&REVOKE, f.revoke)?,
            api_key: rule(&API_KEY, f.api_key)?,
        })
    }
}

/// Validates one limit against its spec.
fn compile_rule(file: &str, spec: &Spec, r: Option<RuleFile>) -> Result<Rule, ConfigError> {
    let r = r.unwrap_or_default();
    let name = spec.name;
    let window = match &r.window {
        None => spec.window,
        Some(w) => {
            let secs = parse_duration(&w.value)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .map_err(|e| ConfigError::at(file, w, format!("limits.{name}.window: {e}")))?;
            if !(1..=MAX_WINDOW).contains(&secs) {
                return Err(ConfigError::at(
                    file,
                    w,
                    format!("limits.{name}.window: between 1s and 366d"),
                ));
            }
            secs
        }
    };
    let scopes = [
        ("per_ip", spec.per_ip),
        ("per_account", spec.per_account),
        ("per_client", spec.per_client),
        ("global", spec.global),
    ];
    let has: Vec<&str> = scopes
        .iter()
        .filter(|(_, d)| d.is_some())
        .map(|(s, _)| *s)
        .collect();
    let budget = |v: &Option<Spanned<Count>>, scope: &str, default: Option<i64>| {
        let Some(default) = default else {
            return match v {
                None => Ok(None),
                Some(v) => Err(ConfigError::at(
                    file,
                    v,
                    format!(
                        "limits.{name}.{scope}: this limit has no such scope (it has {})",
                        has.join(", ")
                    ),
                )),
            };
        };
        let max = match v.as_ref().map(|v| (v, &v.value)) {
            None => default,
            Some((_, Count::Off)) => return Ok(None),
            Some((_, Count::Number(n))) if (1..=MAX_COUNT).contains(n) => *n,
            Some((v, written)) => {
                let written = match written {
                    Count::Number(n) => n.to_string(),
                    Count::Other(text) => format!("{text:?}"),
                    Count::Off => "off".into(),
                };
                return Err(ConfigError::at(
                    file,
                    v,
                    format!(
                        "limits.{name}.{scope}: {written} is not a count from 1 to {MAX_COUNT}, \
                         or `off`"
                    ),
                ));
            }
        };
        Ok(Some(Budget { max, window }))
    };
    Ok(Rule {
        per_ip: budget(&r.per_ip, "per_ip", spec.per_ip)?,
        per_account: budget(&r.per_account, "per_account", spec.per_account)?,
        per_client: budget(&r.per_client, "per_client", spec.per_client)?,
        global: budget(&r.global, "global", spec.global)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<LimitsConfig, String> {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct Top {
            #[serde(default)]
            limits: LimitsFile,
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("issuer.yaml");
        std::fs::write(&p, yaml).unwrap();
        let top: Top = portcullis_common::config::read_yaml(&p).map_err(|e| e.to_string())?;
        LimitsConfig::compile(top.limits, "issuer.yaml", 5).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = load("").unwrap();
        let hour = |max| Some(Budget { max, window: 3600 });
        assert_eq!(c.anonymous.per_ip, hour(30));
        assert_eq!(c.anonymous.global, hour(1000));
        assert_eq!(c.anonymous.per_account, None);
        assert_eq!(c.signup.per_ip, hour(10));
        assert_eq!(c.mail.global, hour(1000));
        assert_eq!(c.confirm_resend.per_account, hour(5));
        assert_eq!(
            c.token.per_ip,
            Some(Budget {
                max: 120,
                window: 60
            })
        );
        assert_eq!(
            c.api_key.per_ip,
            Some(Budget {
                max: 20,
                window: 900
            })
        );
    }

    #[test]
    fn values_off_and_windows() {
        let c = load(
            "limits:\n  anonymous: {per_ip: 3, global: off, window: 10s}\n  \
             signup:\n    per_ip: \"off\"\n  refresh: {window: 2m}\n",
        )
        .unwrap();
        assert_eq!(c.anonymous.per_ip, Some(Budget { max: 3, window: 10 }));
        assert_eq!(c.anonymous.global, None);
        assert_eq!(c.signup.per_ip, None);
        assert_eq!(
            c.signup.global,
            Some(Budget {
                max: 500,
                window: 3600
            })
        );
        assert_eq!(
            c.refresh.per_ip,
            Some(Budget {
                max: 60,
                window: 120
            })
        );
    }

    #[test]
    fn the_older_resend_key_is_the_default() {
        let c = LimitsConfig::compile(LimitsFile::default(), "f", 2).unwrap();
        assert_eq!(c.confirm_resend.per_account.map(|b| b.max), Some(2));
        let c = load("limits:\n  confirm_resend: {per_account: 7}\n").unwrap();
        assert_eq!(c.confirm_resend.per_account.map(|b| b.max), Some(7));
    }

    /// The shipped config states every default, and the README's table names every limit.
    #[test]
    fn shipped_config_and_readme_list_every_limit() {
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/issuer.yaml");
        #[derive(Deserialize, Default)]
        struct Shipped {
            limits: LimitsFile,
        }
        let f: Shipped =
            portcullis_common::config::read_yaml(std::path::Path::new(shipped)).unwrap();
        let shipped = LimitsConfig::compile(f.limits, "issuer.yaml", 5).unwrap();
        assert_eq!(shipped, load("").unwrap());
        let readme = include_str!("../../../README.md");
        for spec in SPECS {
            let scopes = [
                ("per_ip", spec.per_ip),
                ("per_account", spec.per_account),
                ("per_client", spec.per_client),
                ("global", spec.global),
            ];
            let key = format!("`limits.{}.", spec.name);
            let row = readme
                .lines()
                .find(|l| l.split('|').nth(2).is_some_and(|k| k.contains(&key)))
                .unwrap_or_else(|| panic!("no README row for limits.{}", spec.name));
            for (scope, default) in scopes {
                if let Some(d) = default {
                    assert!(row.contains(scope), "{row}: {scope}");
                    assert!(row.contains(&d.to_string()), "{row}: default {d}");
                }
            }
        }
    }

    #[test]
    fn errors_name_line_and_key() {
        for (yaml, line, needle) in [
            ("limits:\n  anonymous:\n    per_ip: 0\n", 3, "limits.anonymous.per_ip: 0 is not a count"),
            ("limits:\n  signup: {per_ip: -1}\n", 2, "limits.signup.per_ip"),
            ("limits:\n  signup: {per_ip: many}\n", 2, "or `off`"),
            ("limits:\n  signup: {per_ip: 1.5}\n", 2, "limits.signup.per_ip"),
            (
                "limits:\n  anonymous:\n    per_account: 3\n",
                3,
                "limits.anonymous.per_account: this limit has no such scope (it has per_ip, global)",
            ),
            ("limits:\n  mail:\n    window: 0s\n", 3, "limits.mail.window"),
            ("limits:\n  mail:\n    window: soon\n", 3, "limits.mail.window"),
            ("limits:\n  mail:\n    window: 400d\n", 3, "366d"),
            ("limits:\n  mails: {global: 1}\n", 2, "mails"),
            ("limits:\n  mail: {global: 1, ip: 2}\n", 2, "ip"),
        ] {
            let e = load(yaml).unwrap_err();
            assert!(
                e.contains(&format!("issuer.yaml:{line}:")) && e.contains(needle),
                "{yaml:?}: {e}"
            );
        }
    }
}
