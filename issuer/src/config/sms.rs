//! The `sms:` section of `config/issuer.yaml`: its file format and compiled form.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::units::parse_duration;
use crate::sms::phone;
use portcullis_common::config::ConfigError;

/// The `sms:` section as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsFile {
    provider: Option<Spanned<String>>,
    signup: Option<bool>,
    default_region: Option<Spanned<String>>,
    #[serde(default)]
    allowed_countries: Vec<Spanned<String>>,
    code_length: Option<Spanned<usize>>,
    code_ttl: Option<Spanned<String>>,
    max_attempts: Option<Spanned<i64>>,
    min_interval: Option<Spanned<String>>,
    max_sends_per_phone_per_hour: Option<Spanned<i64>>,
    max_sends_per_ip_per_hour: Option<Spanned<i64>>,
    max_sends_per_hour: Option<Spanned<i64>>,
    max_verifications_per_ip_per_hour: Option<Spanned<i64>>,
    message: Option<Spanned<String>>,
    #[serde(default)]
    test_numbers: BTreeMap<String, Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<u32>>,
    #[serde(default)]
    log: LogFile,
    twilio: Option<TwilioFile>,
    webhook: Option<WebhookFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TwilioFile {
    account_sid: Spanned<String>,
    auth_token_file: Spanned<String>,
    from: Option<Spanned<String>>,
    messaging_service_sid: Option<Spanned<String>>,
    base_url: Option<Spanned<String>>,
    status_callback: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookFile {
    url: Spanned<String>,
    secret_file: Spanned<String>,
    #[serde(default)]
    include_code: bool,
}

/// Which provider delivers the codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderConfig {
    /// Development: log the message and append it to a file.
    Log {
        /// File the messages are appended to (`<to>\t<code>\t<body>` per line).
        file: Option<PathBuf>,
    },
    /// Twilio's Messages API.
    Twilio(TwilioConfig),
    /// A JSON POST to a URL, signed with HMAC-SHA256.
    Webhook {
        /// Where messages are posted.
        url: String,
        /// File holding the HMAC key.
        secret_file: PathBuf,
        /// Whether the JSON carries the bare code next to the rendered body.
        include_code: bool,
    },
}

/// Twilio settings; the auth token itself is read from `auth_token_file` at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioConfig {
    /// Account SID (`AC…`), the basic-auth user and part of the URL.
    pub account_sid: String,
    /// File holding the auth token.
    pub auth_token_file: PathBuf,
    /// Sender number (E.164) or alphanumeric sender; exclusive with `messaging_service_sid`.
    pub from: Option<String>,
    /// Messaging service (`MG…`); exclusive with `from`.
    pub messaging_service_sid: Option<String>,
    /// API base, `https://api.twilio.com` unless testing.
    pub base_url: String,
    /// Public URL of `/v1/webhooks/sms-status` as Twilio calls it (signatures cover it).
    pub status_callback: Option<String>,
}

/// The validated `sms:` section.
#[derive(Debug, Clone)]
pub struct SmsConfig {
    /// The provider.
    pub provider: ProviderConfig,
    /// Create an account on the first verification of an unknown number.
    pub signup: bool,
    /// Region assumed for numbers written without `+` when the request gives none.
    pub default_region: Option<String>,
    /// ISO 3166 alpha-2 regions codes may be sent to (empty: any; only allowed with `log`).
    pub allowed_countries: Vec<String>,
    /// Digits per code, 6–10.
    pub code_length: usize,
    /// Lifetime of a code.
    pub code_ttl: Duration,
    /// Wrong attempts after which a code is dead.
    pub max_attempts: i64,
    /// Minimum time between two sends to one number.
    pub min_interval: Duration,
    /// Sends per number per hour.
    pub max_sends_per_phone_per_hour: i64,
    /// Sends per client IP per hour.
    pub max_sends_per_ip_per_hour: i64,
    /// Sends in total per hour.
    pub max_sends_per_hour: i64,
    /// Verification attempts per client IP per hour.
    pub max_verifications_per_ip_per_hour: i64,
    /// Message template: `{code}` and `{minutes}` are replaced.
    pub message: String,
    /// Fixed codes for reviewers' numbers (E.164 → code); nothing is sent to them.
    pub test_numbers: BTreeMap<String, String>,
    /// Per-attempt provider timeout.
    pub timeout: Duration,
    /// Provider retries after the first attempt (connect errors, 5xx, 429).
    pub retries: u32,
}

fn http_url(file: &str, s: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let v = s.value.trim();
    if (v.starts_with("http://") || v.starts_with("https://")) && !v.contains(char::is_whitespace) {
        Ok(v.to_string())
    } else {
        Err(ConfigError::at(
            file,
            s,
            format!("sms.{key}: {v:?} is not an http(s) URL"),
        ))
    }
}

impl SmsFile {
    /// Validates the section; relative paths are relative to `dir` (the config's directory).
    pub fn compile(self, file: &str, dir: &Path) -> Result<SmsConfig, ConfigError> {
        let dur = |v: &Option<Spanned<String>>, key: &str, default: u64| match v {
            None => Ok(Duration::from_secs(default)),
            Some(s) => parse_duration(&s.value)
                .map_err(|e| ConfigError::at(file, s, format!("sms.{key}: {e}"))),
        };
        let positive = |v: &Option<Spanned<i64>>, key: &str, default: i64| match v {
            None => Ok(default),
            Some(n) if n.value >= 1 => Ok(n.value),
            Some(n) => Err(ConfigError::at(
                file,
                n,
                format!("sms.{key}: must be at least 1"),
            )),
        };
        let provider = match &self.provider {
            None => {
                return Err(ConfigError::File {
                    file: file.to_string(),
                    message: "sms.provider: required (log, twilio or webhook)".into(),
                })
            }
            Some(p) => match p.value.as_str() {
                "log" => ProviderConfig::Log {
                    file: self.log.file.as_ref().map(|f| dir.join(f)),
                },
                "twilio" => {
                    let Some(t) = &self.twilio else {
                        return Err(ConfigError::at(
                            file,
                            p,
                            "sms.twilio: required with provider twilio",
                        ));
                    };
                    let sid = t.account_sid.value.trim();
                    if !sid.starts_with("AC") || !sid.chars().all(|c| c.is_ascii_alphanumeric()) {
                        return Err(ConfigError::at(
                            file,
                            &t.account_sid,
                            "sms.twilio.account_sid: an account SID (AC…)",
                        ));
                    }
                    if t.from.is_some() == t.messaging_service_sid.is_some() {
                        return Err(ConfigError::at(
                            file,
                            p,
                            "sms.twilio: give exactly one of `from` and `messaging_service_sid`",
                        ));
                    }
                    let base_url = match &t.base_url {
                        None => "https://api.twilio.com".to_string(),
                        Some(b) => http_url(file, b, "twilio.base_url")?
                            .trim_end_matches('/')
                            .to_string(),
                    };
                    let status_callback = match &t.status_callback {
                        None => None,
                        Some(s) => Some(http_url(file, s, "twilio.status_callback")?),
                    };
                    ProviderConfig::Twilio(TwilioConfig {
                        account_sid: sid.to_string(),
                        auth_token_file: dir.join(&t.auth_token_file.value),
                        from: t.from.as_ref().map(|f| f.value.trim().to_string()),
                        messaging_service_sid: t
                            .messaging_service_sid
                            .as_ref()
                            .map(|m| m.value.trim().to_string()),
                        base_url,
                        status_callback,
                    })
                }
                "webhook" => {
                    let Some(w) = &self.webhook else {
                        return Err(ConfigError::at(
                            file,
                            p,
                            "sms.webhook: required with provider webhook",
                        ));
                    };
                    ProviderConfig::Webhook {
                        url: http_url(file, &w.url, "webhook.url")?,
                        secret_file: dir.join(&w.secret_file.value),
                        include_code: w.include_code,
                    }
                }
                other => {
                    return Err(ConfigError::at(
                        file,
                        p,
                        format!("sms.provider: {other:?} is not one of log, twilio, webhook"),
                    ))
                }
            },
        };
        let default_region = match &self.default_region {
            None => None,
            Some(r) => Some(phone::region(&r.value).ok_or_else(|| {
                ConfigError::at(
                    file,
                    r,
                    format!(
                        "sms.default_region: {:?} is not an ISO 3166 alpha-2 region",
                        r.value
                    ),
                )
            })?),
        };
        let mut allowed_countries = Vec::new();
        for c in &self.allowed_countries {
            let r = phone::region(&c.value).ok_or_else(|| {
                ConfigError::at(
                    file,
                    c,
                    format!(
                        "sms.allowed_countries: {:?} is not an ISO 3166 alpha-2 region",
                        c.value
                    ),
                )
            })?;
            allowed_countries.push(r);
        }
        // SMS pumping: a real provider without a country list would send anywhere it is asked.
        if allowed_countries.is_empty() && !matches!(provider, ProviderConfig::Log { .. }) {
            let message = "sms.allowed_countries: required with a real provider (e.g. [US, GB])";
            return Err(match &self.provider {
                Some(p) => ConfigError::at(file, p, message),
                None => ConfigError::File {
                    file: file.to_string(),
                    message: message.into(),
                },
            });
        }
        let code_length = match &self.code_length {
            None => 6,
            Some(n) if (6..=10).contains(&n.value) => n.value,
            Some(n) => {
                return Err(ConfigError::at(
                    file,
                    n,
                    "sms.code_length: between 6 and 10",
                ))
            }
        };
        let mut test_numbers = BTreeMap::new();
        for (number, code) in &self.test_numbers {
            let e164 = phone::parse(number, None)
                .map_err(|e| {
                    ConfigError::at(file, code, format!("sms.test_numbers: {number:?}: {e}"))
                })?
                .e164;
            if code.value.len() != code_length || !code.value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConfigError::at(
                    file,
                    code,
                    format!("sms.test_numbers: the code of {number} must be {code_length} digits"),
                ));
            }
            test_numbers.insert(e164, code.value.clone());
        }
        let message = match &self.message {
            None => "Your code is {code}. It expires in {minutes} min.".to_string(),
            Some(m) if m.value.contains("{code}") && m.value.len() <= 600 => m.value.clone(),
            Some(m) => {
                return Err(ConfigError::at(
                    file,
                    m,
                    "sms.message: must contain {code} (and be at most 600 bytes)",
                ))
            }
        };
        let timeout = dur(&self.timeout, "timeout", 10)?;
        if timeout.is_zero() {
            return Err(ConfigError::File {
                file: file.to_string(),
                message: "sms.timeout: must be positive".into(),
            });
        }
        let retries = match &self.retries {
            None => 2,
            Some(r) if r.value <= 5 => r.value,
            Some(r) => return Err(ConfigError::at(file, r, "sms.retries: at most 5")),
        };
        let code_ttl = dur(&self.code_ttl, "code_ttl", 300)?;
        if code_ttl.is_zero() {
            return Err(ConfigError::File {
                file: file.to_string(),
                message: "sms.code_ttl: must be positive".into(),
            });
        }
        Ok(SmsConfig {
            provider,
            signup: self.signup.unwrap_or(true),
            default_region,
            allowed_countries,
            code_length,
            code_ttl,
            max_attempts: positive(&self.max_attempts, "max_attempts", 5)?,
            min_interval: dur(&self.min_interval, "min_interval", 60)?,
            max_sends_per_phone_per_hour: positive(
                &self.max_sends_per_phone_per_hour,
                "max_sends_per_phone_per_hour",
                5,
            )?,
            max_sends_per_ip_per_hour: positive(
                &self.max_sends_per_ip_per_hour,
                "max_sends_per_ip_per_hour",
                20,
            )?,
            max_sends_per_hour: positive(&self.max_sends_per_hour, "max_sends_per_hour", 1000)?,
            max_verifications_per_ip_per_hour: positive(
                &self.max_verifications_per_ip_per_hour,
                "max_verifications_per_ip_per_hour",
                60,
            )?,
            message,
            test_numbers,
            timeout,
            retries,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_load as load;

    fn error(yaml: &str) -> String {
        match load(yaml) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e,
        }
    }

    const TWILIO: &str = "  twilio:\n    account_sid: AC0123\n    auth_token_file: tok\n    \
                          from: \"+15005550006\"\n";

    #[test]
    fn absent_section_means_off_and_defaults_are_safe() {
        assert!(load("").unwrap().sms.is_none());
        let c = load("sms:\n  provider: log\n").unwrap().sms.unwrap();
        assert_eq!(c.code_length, 6);
        assert_eq!(c.code_ttl.as_secs(), 300);
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.min_interval.as_secs(), 60);
        assert!(c.signup);
        assert!(c.test_numbers.is_empty(), "no test numbers by default");
        assert!(c.allowed_countries.is_empty());
        let c = load(&format!(
            "sms:\n  provider: twilio\n  allowed_countries: [us, GB]\n  \
             test_numbers:\n    \"+1 201 555 0199\": \"424242\"\n{TWILIO}"
        ))
        .unwrap()
        .sms
        .unwrap();
        assert_eq!(c.allowed_countries, ["US", "GB"]);
        assert_eq!(
            c.test_numbers.get("+12015550199").map(String::as_str),
            Some("424242")
        );
        match c.provider {
            super::ProviderConfig::Twilio(t) => {
                assert_eq!(t.base_url, "https://api.twilio.com");
                assert!(t.auth_token_file.ends_with("tok"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key_and_place() {
        for (yaml, key) in [
            ("sms:\n  signup: true\n", "sms.provider"),
            ("sms:\n  provider: carrier-pigeon\n", "sms.provider"),
            (
                "sms:\n  provider: log\n  code_length: 5\n",
                "sms.code_length",
            ),
            (
                "sms:\n  provider: log\n  code_length: 11\n",
                "sms.code_length",
            ),
            ("sms:\n  provider: log\n  code_ttl: 5x\n", "sms.code_ttl"),
            (
                "sms:\n  provider: log\n  max_attempts: 0\n",
                "sms.max_attempts",
            ),
            (
                "sms:\n  provider: log\n  default_region: Mars\n",
                "sms.default_region",
            ),
            (
                "sms:\n  provider: log\n  allowed_countries: [XX]\n",
                "sms.allowed_countries",
            ),
            ("sms:\n  provider: log\n  message: hello\n", "sms.message"),
            ("sms:\n  provider: log\n  retries: 9\n", "sms.retries"),
            ("sms:\n  provider: log\n  bogus: 1\n", "bogus"),
            (
                "sms:\n  provider: log\n  test_numbers:\n    \"12\": \"123456\"\n",
                "sms.test_numbers",
            ),
            (
                "sms:\n  provider: log\n  test_numbers:\n    \"+12015550199\": \"12\"\n",
                "sms.test_numbers",
            ),
            (
                "sms:\n  provider: twilio\n  allowed_countries: [US]\n",
                "sms.twilio",
            ),
        ] {
            let e = error(yaml);
            assert!(e.contains(key), "{yaml:?}: {e}");
            assert!(e.contains("issuer.yaml"), "{e}");
        }
        // A real provider without a country list would send anywhere: refused.
        let e = error(&format!("sms:\n  provider: twilio\n{TWILIO}"));
        assert!(
            e.contains("sms.allowed_countries") && e.contains(":2:"),
            "{e}"
        );
        let e = error(&format!(
            "sms:\n  provider: twilio\n  allowed_countries: [US]\n{TWILIO}    \
             messaging_service_sid: MG1\n"
        ));
        assert!(e.contains("exactly one"), "{e}");
        let e = error(
            "sms:\n  provider: twilio\n  allowed_countries: [US]\n  twilio:\n    \
             account_sid: nope\n    auth_token_file: t\n    from: x\n",
        );
        assert!(e.contains("sms.twilio.account_sid"), "{e}");
        let e = error(
            "sms:\n  provider: webhook\n  allowed_countries: [US]\n  webhook:\n    \
             url: ftp://x\n    secret_file: s\n",
        );
        assert!(e.contains("sms.webhook.url"), "{e}");
    }
}
