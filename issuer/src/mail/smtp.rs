//! SMTP delivery with lettre over rustls: implicit TLS, required STARTTLS (never a silent
//! downgrade to plain text), or plain text for a local relay.

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{MailError, Outgoing};
use crate::config::email::{SmtpConfig, SmtpTls};

/// A configured SMTP relay.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Bound on one whole delivery (connect, TLS, AUTH, DATA).
    overall: std::time::Duration,
}

impl SmtpMailer {
    /// Builds the transport (no connection is made until the first message).
    pub fn new(cfg: &SmtpConfig) -> Result<SmtpMailer, MailError> {
        let tls_params = || -> Result<TlsParameters, MailError> {
            let mut b = TlsParameters::builder(cfg.host.clone());
            if let Some(pem) = &cfg.ca_pem {
                let cert = Certificate::from_pem(pem)
                    .map_err(|e| MailError::Build(format!("ca_file: {e}")))?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls()
                .map_err(|e| MailError::Build(format!("tls: {e}")))
        };
        let tls = match cfg.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(tls_params()?),
            SmtpTls::Tls => Tls::Wrapper(tls_params()?),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
            .port(cfg.port)
            .tls(tls)
            .timeout(Some(cfg.timeout));
        if let Some(name) = &cfg.helo_name {
            b = b.hello_name(ClientId::Domain(name.clone()));
        }
        if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
            b = b.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(SmtpMailer {
            transport: b.build(),
            // Each command has `timeout`; a handful of round trips bound the whole exchange.
            overall: cfg.timeout.saturating_mul(4),
        })
    }

    /// Sends one message.
    pub async fn send(&self, mail: &Outgoing) -> Result<(), MailError> {
        match tokio::time::timeout(self.overall, self.transport.send(mail.message.clone())).await {
            Err(_) => Err(MailError::Timeout),
            Ok(Err(e)) => Err(MailError::Smtp(e.to_string())),
            Ok(Ok(_)) => Ok(()),
        }
    }
}
