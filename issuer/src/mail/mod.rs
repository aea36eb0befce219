//! Outgoing mail for the email flows (address confirmation, email change, password reset):
//! rendering from the configured templates, and delivery by SMTP (production), to files or
//! to the log (development).

pub mod file;
pub mod smtp;
pub mod template;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::Message;
use thiserror::Error;

use self::template::Values;
use crate::config::email::{EmailConfig, MailTemplate, MailerKind};

/// Why a message was not delivered.
#[derive(Debug, Error)]
pub enum MailError {
    /// The message could not be built (e.g. an address lettre refuses).
    #[error("building the message: {0}")]
    Build(String),
    /// The relay refused or could not be reached.
    #[error("smtp: {0}")]
    Smtp(String),
    /// The file mailer could not write.
    #[error("writing the message: {0}")]
    Io(String),
    /// Delivery took longer than the configured timeout.
    #[error("timed out")]
    Timeout,
}

/// What a message is for (also the `kind` label of the metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailKind {
    /// Confirm the address of a new account (or a first address).
    ConfirmEmail,
    /// Confirm a new address before it replaces the old one.
    ChangeEmail,
    /// Choose a new password.
    ResetPassword,
}

impl MailKind {
    /// Stable name, as in metrics and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::ConfirmEmail => "confirm_email",
            MailKind::ChangeEmail => "change_email",
            MailKind::ResetPassword => "reset_password",
        }
    }
}

/// A message ready to deliver.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// What it is for.
    pub kind: MailKind,
    /// Recipient address.
    pub to: String,
    /// The built message (headers and body).
    pub message: Message,
}

/// Renders the message of `kind` for `to`, with a link carrying `token`.
pub fn render(
    cfg: &EmailConfig,
    kind: MailKind,
    to: &str,
    token: &str,
) -> Result<Outgoing, MailError> {
    let (tpl, url, ttl): (&MailTemplate, &str, u64) = match kind {
        MailKind::ConfirmEmail => (
            &cfg.confirm_template,
            &cfg.confirm_url,
            cfg.confirm_ttl.as_secs(),
        ),
        MailKind::ChangeEmail => (
            &cfg.change_template,
            &cfg.confirm_url,
            cfg.confirm_ttl.as_secs(),
        ),
        MailKind::ResetPassword => (&cfg.reset_template, &cfg.reset_url, cfg.reset_ttl.as_secs()),
    };
    // Tokens are base64url, so they need no escaping inside a URL.
    let link = url.replace("{token}", token);
    let values = Values {
        link: &link,
        email: to,
        minutes: ttl.div_ceil(60),
    };
    let from: Mailbox = cfg
        .from
        .parse()
        .map_err(|e| MailError::Build(format!("from: {e}")))?;
    let to_box: Mailbox = to
        .parse()
        .map_err(|e| MailError::Build(format!("recipient: {e}")))?;
    let message = Message::builder()
        .from(from)
        .to(to_box)
        .subject(tpl.subject.render(&values))
        .header(ContentType::TEXT_PLAIN)
        .body(body(tpl.body.render(&values)))
        .map_err(|e| MailError::Build(e.to_string()))?;
    Ok(Outgoing {
        kind,
        to: to.to_string(),
        message,
    })
}

/// The body as 7bit when it is ASCII with lines of at most 998 octets (RFC 5322), so that
/// links stay intact and copyable in the raw message; otherwise lettre's own choice
/// (quoted-printable or base64).
fn body(text: String) -> Body {
    let crlf = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n");
    if crlf.is_ascii() && crlf.split("\r\n").all(|l| l.len() <= 998) {
        Body::dangerous_pre_encoded(crlf.into_bytes(), ContentTransferEncoding::SevenBit)
    } else {
        Body::new(text)
    }
}

/// Delivers messages with the configured mailer.
pub enum Mailer {
    /// An SMTP relay.
    Smtp(smtp::SmtpMailer),
    /// `.eml` files in a directory.
    File(file::FileMailer),
    /// The log.
    Log,
}

impl Mailer {
    /// The mailer `cfg` asks for.
    pub fn new(cfg: &EmailConfig) -> Result<Mailer, MailError> {
        Ok(match (cfg.mailer, &cfg.smtp) {
            (MailerKind::Smtp, Some(s)) => Mailer::Smtp(smtp::SmtpMailer::new(s)?),
            (MailerKind::Smtp, None) => {
                return Err(MailError::Build("mailer smtp without smtp settings".into()))
            }
            (MailerKind::File, _) => Mailer::File(file::FileMailer::new(cfg.file_dir.clone())),
            (MailerKind::Log, _) => Mailer::Log,
        })
    }

    /// Delivers `mail`.
    pub async fn send(&self, mail: &Outgoing) -> Result<(), MailError> {
        match self {
            Mailer::Smtp(s) => s.send(mail).await,
            Mailer::File(f) => f.send(mail).await,
            Mailer::Log => {
                // Development only: the link in the body is a live credential.
                tracing::info!(
                    target: "mail",
                    kind = mail.kind.as_str(),
                    to = %mail.to,
                    message = %String::from_utf8_lossy(&mail.message.formatted()),
                    "mail (log mailer)"
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Result<EmailConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("issuer.yaml");
        std::fs::write(&p, yaml).unwrap();
        crate::config::IssuerConfig::load(&p)
            .map(|c| c.email)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn render_fills_link_and_headers() {
        let c = cfg(
            "email:\n  enabled: true\n  from: \"Acme <no-reply@acme.test>\"\n  \
                     reset_url: https://app.acme.test/reset#t={token}\n  reset_ttl: 30m\n",
        )
        .unwrap();
        let m = render(&c, MailKind::ResetPassword, "bob@example.com", "TOKEN123").unwrap();
        let raw = String::from_utf8(m.message.formatted()).unwrap();
        assert!(raw.contains("From: Acme <no-reply@acme.test>"), "{raw}");
        assert!(raw.contains("To: bob@example.com"), "{raw}");
        assert!(raw.contains("Subject: Reset your password"), "{raw}");
        assert!(
            raw.contains("https://app.acme.test/reset#t=TOKEN123"),
            "{raw}"
        );
        assert!(raw.contains("30 minutes"), "{raw}");
        assert!(raw.contains("Content-Transfer-Encoding: 7bit"), "{raw}");
        assert!(
            !raw.contains("\n\n") && raw.contains("\r\n\r\n"),
            "CRLF only: {raw:?}"
        );
        // Non-ASCII text is left to lettre's encoder.
        let c = cfg("email:\n  templates:\n    reset_password:\n      subject: Grüße\n      body: \"Grüße {link}\"\n").unwrap();
        let m = render(&c, MailKind::ResetPassword, "bob@example.com", "T").unwrap();
        let raw = String::from_utf8(m.message.formatted()).unwrap();
        assert!(!raw.contains("Content-Transfer-Encoding: 7bit"), "{raw}");
        // Header injection through the address is impossible: it must parse as one mailbox.
        assert!(render(&c, MailKind::ConfirmEmail, "a@b.c\r\nBcc: x@y.z", "t").is_err());
    }

    #[test]
    fn email_config_defaults_and_errors() {
        let c = cfg("").unwrap();
        assert!(!c.enabled);
        assert_eq!(c.mailer, MailerKind::Log);
        assert_eq!(c.confirm_ttl.as_secs(), 86_400);
        assert_eq!(c.reset_ttl.as_secs(), 3_600);
        assert!(!c.require_confirmed);
        let err = |yaml: &str| cfg(yaml).unwrap_err();
        let e = err("email:\n  mailer: pigeon\n");
        assert!(e.contains(":2:") && e.contains("email.mailer"), "{e}");
        let e = err("email:\n  enabled: true\n  confirm_url: https://app/confirm\n");
        assert!(e.contains(":3:") && e.contains("{token}"), "{e}");
        let e = err("email:\n  reset_ttl: soon\n");
        assert!(e.contains(":2:") && e.contains("email.reset_ttl"), "{e}");
        let e = err("email:\n  from: not an address\n");
        assert!(e.contains(":2:") && e.contains("email.from"), "{e}");
        let e = err("email:\n  templates:\n    reset_password:\n      body: \"hi {name}\"\n");
        assert!(e.contains(":4:") && e.contains("{name}"), "{e}");
        let e = err("email:\n  templates:\n    confirm_email:\n      body: \"no link\"\n");
        assert!(e.contains(":4:") && e.contains("{link}"), "{e}");
        let e = err("email:\n  mailer: smtp\n");
        assert!(e.contains(":2:") && e.contains("smtp.host"), "{e}");
        let e =
            err("email:\n  mailer: smtp\n  smtp:\n    host: mx.example.com\n    tls: sometimes\n");
        assert!(e.contains(":5:") && e.contains("email.smtp.tls"), "{e}");
        let e = err("email:\n  mailer: smtp\n  smtp:\n    host: mx.example.com\n    username: u\n    password_file: nope.txt\n");
        assert!(e.contains(":6:") && e.contains("password_file"), "{e}");
        let e = err("email:\n  bogus: 1\n");
        assert!(e.contains(":2:") && e.contains("bogus"), "{e}");
        let e = err("email:\n  forgot_per_ip_per_hour: 0\n");
        assert!(
            e.contains(":2:") && e.contains("forgot_per_ip_per_hour"),
            "{e}"
        );
    }

    #[test]
    fn smtp_credentials_need_tls_off_loopback() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "secret\n").unwrap();
        let p = dir.path().join("issuer.yaml");
        let load = |host: &str, tls: &str| {
            std::fs::write(
                &p,
                format!(
                    "email:\n  mailer: smtp\n  smtp:\n    host: {host}\n    tls: {tls}\n    \
                     username: u\n    password_file: pw\n"
                ),
            )
            .unwrap();
            crate::config::IssuerConfig::load(&p).map(|c| c.email)
        };
        let e = load("mx.example.com", "none").unwrap_err().to_string();
        assert!(e.contains(":5:") && e.contains("loopback"), "{e}");
        let c = load("127.0.0.1", "none").unwrap();
        let s = c.smtp.unwrap();
        assert_eq!(s.password.as_deref(), Some("secret"));
        assert_eq!(s.port, 25);
        assert!(!format!("{s:?}").contains("secret"));
        let s = load("mx.example.com", "tls").unwrap().smtp.unwrap();
        assert_eq!(s.port, 465);
    }
}
