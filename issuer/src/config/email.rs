//! The `email:` section of `config/issuer.yaml`: its file format and validated form.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::mail::template::Template;
use portcullis_common::config::ConfigError;

/// `email:` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailFile {
    enabled: Option<bool>,
    mailer: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    confirm_url: Option<Spanned<String>>,
    reset_url: Option<Spanned<String>>,
    confirm_ttl: Option<Spanned<String>>,
    reset_ttl: Option<Spanned<String>>,
    require_confirmed_email_for_password_login: Option<bool>,
    forgot_per_email_per_hour: Option<Spanned<i64>>,
    forgot_per_ip_per_hour: Option<Spanned<i64>>,
    #[serde(default)]
    file: FileMailerFile,
    #[serde(default)]
    smtp: SmtpFile,
    #[serde(default)]
    templates: TemplatesFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMailerFile {
    dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpFile {
    host: Option<Spanned<String>>,
    port: Option<u16>,
    tls: Option<Spanned<String>>,
    username: Option<String>,
    password_file: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    helo_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplatesFile {
    #[serde(default)]
    confirm_email: TemplateFile,
    #[serde(default)]
    change_email: TemplateFile,
    #[serde(default)]
    reset_password: TemplateFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    subject: Option<Spanned<String>>,
    body: Option<Spanned<String>>,
}

/// Which mailer delivers the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailerKind {
    /// An SMTP relay (production).
    Smtp,
    /// One `.eml` file per message in a directory (development).
    File,
    /// The message in the log (development; the log then holds live links).
    Log,
}

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (loopback relays only when credentials are set).
    None,
    /// Plain connection upgraded with STARTTLS, which is required (no downgrade).
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// Validated SMTP settings.
#[derive(Clone)]
pub struct SmtpConfig {
    /// Relay host name (also the name its certificate must carry).
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Connection security.
    pub tls: SmtpTls,
    /// Login, when the relay needs one.
    pub username: Option<String>,
    /// Password read from `password_file` (never in the config file itself).
    pub password: Option<String>,
    /// Bound on connecting and on every SMTP command.
    pub timeout: Duration,
    /// Extra trusted CA certificate (PEM) for a relay with a private or self-signed certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// EHLO name; default `localhost`.
    pub helo_name: Option<String>,
}

// Hand-written so that the SMTP password never reaches a log line.
impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("helo_name", &self.helo_name)
            .finish()
    }
}

/// Subject and body of one kind of message.
#[derive(Clone, Debug)]
pub struct MailTemplate {
    /// Subject line.
    pub subject: Template,
    /// Plain-text body.
    pub body: Template,
}

/// The validated `email:` section.
#[derive(Clone, Debug)]
pub struct EmailConfig {
    /// Confirmation and reset flows on (`POST /v1/password/*`, confirmation mails).
    pub enabled: bool,
    /// Which mailer delivers.
    pub mailer: MailerKind,
    /// `From:` address (`Name <addr>` or `addr`).
    pub from: String,
    /// Link of confirmation mails; contains `{token}`.
    pub confirm_url: String,
    /// Link of password-reset mails; contains `{token}`.
    pub reset_url: String,
    /// Lifetime of confirmation (and email-change) links.
    pub confirm_ttl: Duration,
    /// Lifetime of password-reset links.
    pub reset_ttl: Duration,
    /// Password logins of accounts whose email is unconfirmed are refused.
    pub require_confirmed: bool,
    /// `POST /v1/password/forgot` (and confirmation resends) per address per hour.
    pub forgot_per_email: i64,
    /// `POST /v1/password/forgot` per client IP per hour.
    pub forgot_per_ip: i64,
    /// Directory of the file mailer.
    pub file_dir: PathBuf,
    /// SMTP settings (when `mailer: smtp`).
    pub smtp: Option<SmtpConfig>,
    /// Sent after sign-up (and to a first address set later).
    pub confirm_template: MailTemplate,
    /// Sent to the new address of an email change.
    pub change_template: MailTemplate,
    /// Sent by `POST /v1/password/forgot`.
    pub reset_template: MailTemplate,
}

/// Default confirmation mail.
const CONFIRM_SUBJECT: &str = "Confirm your email address";
const CONFIRM_BODY: &str = "Hello,\n\nplease confirm that {email} is your email address by \
opening this link:\n\n{link}\n\nThe link works once and expires in {minutes} minutes. If you \
did not create an account, ignore this message.\n";
/// Default email-change mail.
const CHANGE_SUBJECT: &str = "Confirm your new email address";
const CHANGE_BODY: &str = "Hello,\n\nsomeone asked to use {email} as the email address of \
their account. To confirm, open this link:\n\n{link}\n\nThe link works once and expires in \
{minutes} minutes. Until then the account keeps its previous address. If this was not you, \
ignore this message.\n";
/// Default password-reset mail.
const RESET_SUBJECT: &str = "Reset your password";
const RESET_BODY: &str = "Hello,\n\na password reset was requested for the account of \
{email}. To choose a new password, open this link:\n\n{link}\n\nThe link works once and \
expires in {minutes} minutes; using it signs the account out everywhere. If you did not ask \
for this, ignore this message: your password stays as it is.\n";

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl EmailConfig {
    /// Validates `f`; `file` names the config file in errors and `dir` is its directory
    /// (relative paths are relative to it).
    pub fn compile(f: EmailFile, file: &str, dir: &Path) -> Result<EmailConfig, ConfigError> {
        let at = |line: u64, column: u64, message: String| ConfigError::At {
            file: file.to_string(),
            line,
            column,
            message,
        };
        let at_s = |s: &Spanned<String>, message: String| {
            at(s.referenced.line(), s.referenced.column(), message)
        };
        let dur = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
            None => Ok(default),
            Some(s) => crate::config::units::parse_duration(&s.value)
                .map_err(|e| at_s(s, format!("email.{key}: {e}")))
                .and_then(|d| {
                    if d.is_zero() {
                        Err(at_s(s, format!("email.{key}: must be positive")))
                    } else {
                        Ok(d)
                    }
                }),
        };
        let url = |v: &Option<Spanned<String>>, key: &str| -> Result<String, ConfigError> {
            let default = match key {
                "confirm_url" => "http://127.0.0.1:8080/confirm-email?token={token}",
                _ => "http://127.0.0.1:8080/reset-password?token={token}",
            };
            let Some(s) = v else {
                return Ok(default.to_string());
            };
            let ok_scheme = s.value.starts_with("https://") || s.value.starts_with("http://");
            if !ok_scheme || s.value.matches("{token}").count() != 1 {
                return Err(at_s(
                    s,
                    format!(
                        "email.{key}: an http(s) URL with exactly one {{token}} placeholder, \
                         e.g. https://app.example.com/{}?token={{token}}",
                        if key == "confirm_url" {
                            "confirm-email"
                        } else {
                            "reset-password"
                        }
                    ),
                ));
            }
            Ok(s.value.clone())
        };
        let mailer = match &f.mailer {
            None => MailerKind::Log,
            Some(m) => match m.value.as_str() {
                "smtp" => MailerKind::Smtp,
                "file" => MailerKind::File,
                "log" => MailerKind::Log,
                other => {
                    return Err(at_s(
                        m,
                        format!("email.mailer: {other:?} is not one of smtp, file, log"),
                    ))
                }
            },
        };
        let from = match &f.from {
            None => "Portcullis <no-reply@localhost>".to_string(),
            Some(s) => {
                if s.value.parse::<lettre::message::Mailbox>().is_err() {
                    return Err(at_s(
                        s,
                        format!(
                            "email.from: {:?} is not an address (`name@example.com` or \
                             `Name <name@example.com>`)",
                            s.value
                        ),
                    ));
                }
                s.value.clone()
            }
        };
        let limit = |v: &Option<Spanned<i64>>, key: &str, default: i64| match v {
            None => Ok(default),
            Some(s) if s.value >= 1 => Ok(s.value),
            Some(s) => Err(at(
                s.referenced.line(),
                s.referenced.column(),
                format!("email.{key}: at least 1"),
            )),
        };
        let template = |t: &TemplateFile,
                        key: &str,
                        subject: &str,
                        body: &str|
         -> Result<MailTemplate, ConfigError> {
            let compile = |v: &Option<Spanned<String>>, part: &str, default: &str| match v {
                None => Template::parse(default)
                    .map_err(|e| at(0, 0, format!("email.templates.{key}.{part}: {e}"))),
                Some(s) => Template::parse(&s.value)
                    .map_err(|e| at_s(s, format!("email.templates.{key}.{part}: {e}"))),
            };
            let subject = compile(&t.subject, "subject", subject)?;
            let body = compile(&t.body, "body", body)?;
            if !body.uses("link") {
                let (line, column) = t
                    .body
                    .as_ref()
                    .map(|s| (s.referenced.line(), s.referenced.column()))
                    .unwrap_or((0, 0));
                return Err(at(
                    line,
                    column,
                    format!("email.templates.{key}.body: must contain {{link}}"),
                ));
            }
            Ok(MailTemplate { subject, body })
        };
        let smtp = if mailer == MailerKind::Smtp {
            let s = &f.smtp;
            let mailer_span = f.mailer.as_ref();
            let host = match &s.host {
                Some(h) if !h.value.trim().is_empty() => h.value.trim().to_string(),
                _ => {
                    let (line, column) = mailer_span
                        .map(|m| (m.referenced.line(), m.referenced.column()))
                        .unwrap_or((0, 0));
                    return Err(at(
                        line,
                        column,
                        "email.smtp.host: required with `mailer: smtp`".into(),
                    ));
                }
            };
            let tls = match &s.tls {
                None => SmtpTls::Starttls,
                Some(t) => match t.value.as_str() {
                    "none" => SmtpTls::None,
                    "starttls" => SmtpTls::Starttls,
                    "tls" => SmtpTls::Tls,
                    other => {
                        return Err(at_s(
                            t,
                            format!("email.smtp.tls: {other:?} is not one of none, starttls, tls"),
                        ))
                    }
                },
            };
            let port = s.port.unwrap_or(match tls {
                SmtpTls::Tls => 465,
                SmtpTls::Starttls => 587,
                SmtpTls::None => 25,
            });
            let password = match &s.password_file {
                None => None,
                Some(p) => {
                    let path = dir.join(&p.value);
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        at_s(
                            p,
                            format!("email.smtp.password_file: {}: {e}", path.display()),
                        )
                    })?;
                    Some(text.trim_end_matches(['\r', '\n']).to_string())
                }
            };
            if password.is_some() != s.username.is_some() {
                let (line, column) = s
                    .password_file
                    .as_ref()
                    .map(|p| (p.referenced.line(), p.referenced.column()))
                    .or_else(|| {
                        s.host
                            .as_ref()
                            .map(|h| (h.referenced.line(), h.referenced.column()))
                    })
                    .unwrap_or((0, 0));
                return Err(at(
                    line,
                    column,
                    "email.smtp: give both `username` and `password_file`, or neither".into(),
                ));
            }
            if password.is_some() && tls == SmtpTls::None && !is_loopback_host(&host) {
                // Credentials in clear text over the network: refuse rather than leak them.
                let (line, column) = s
                    .tls
                    .as_ref()
                    .map(|t| (t.referenced.line(), t.referenced.column()))
                    .unwrap_or((0, 0));
                return Err(at(
                    line,
                    column,
                    "email.smtp.tls: `none` with credentials is only allowed for a loopback \
                     relay; use starttls or tls"
                        .into(),
                ));
            }
            let ca_pem = match &s.ca_file {
                None => None,
                Some(c) => {
                    let path = dir.join(&c.value);
                    let pem = std::fs::read(&path).map_err(|e| {
                        at_s(c, format!("email.smtp.ca_file: {}: {e}", path.display()))
                    })?;
                    if lettre::transport::smtp::client::Certificate::from_pem(&pem).is_err() {
                        return Err(at_s(
                            c,
                            format!(
                                "email.smtp.ca_file: {}: not a PEM certificate",
                                path.display()
                            ),
                        ));
                    }
                    Some(pem)
                }
            };
            Some(SmtpConfig {
                host,
                port,
                tls,
                username: s.username.clone(),
                password,
                timeout: dur(&s.timeout, "smtp.timeout", Duration::from_secs(10))?,
                ca_pem,
                helo_name: s.helo_name.clone(),
            })
        } else {
            None
        };
        Ok(EmailConfig {
            enabled: f.enabled.unwrap_or(false),
            mailer,
            from,
            confirm_url: url(&f.confirm_url, "confirm_url")?,
            reset_url: url(&f.reset_url, "reset_url")?,
            confirm_ttl: dur(&f.confirm_ttl, "confirm_ttl", Duration::from_secs(86_400))?,
            reset_ttl: dur(&f.reset_ttl, "reset_ttl", Duration::from_secs(3_600))?,
            require_confirmed: f
                .require_confirmed_email_for_password_login
                .unwrap_or(false),
            forgot_per_email: limit(&f.forgot_per_email_per_hour, "forgot_per_email_per_hour", 5)?,
            forgot_per_ip: limit(&f.forgot_per_ip_per_hour, "forgot_per_ip_per_hour", 30)?,
            file_dir: f
                .file
                .dir
                .map(|d| dir.join(d))
                .unwrap_or_else(|| dir.join("../data/mail")),
            smtp,
            confirm_template: template(
                &f.templates.confirm_email,
                "confirm_email",
                CONFIRM_SUBJECT,
                CONFIRM_BODY,
            )?,
            change_template: template(
                &f.templates.change_email,
                "change_email",
                CHANGE_SUBJECT,
                CHANGE_BODY,
            )?,
            reset_template: template(
                &f.templates.reset_password,
                "reset_password",
                RESET_SUBJECT,
                RESET_BODY,
            )?,
        })
    }
}
