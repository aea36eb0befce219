//! Prometheus metrics (`/metrics` on the admin listener).

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

/// The `method` labels of `portcullis_issuer_logins_total`.
const LOGIN_METHODS: [&str; 5] = ["pwd", "key", "anon", "signup", "sms"];

/// The issuer's metrics.
pub struct Metrics {
    registry: Registry,
    /// Logins by method (`pwd`, `key`, `anon`, `signup`, `sms`) and result (`ok`, `denied`).
    pub logins: IntCounterVec,
    /// Refreshes by outcome (`rotated`, `grace`, `reused`, `invalid`).
    pub refreshes: IntCounterVec,
    /// HTTP answers by status code.
    pub requests: IntCounterVec,
    /// Mails of the email flows by kind (`confirm_email`, `change_email`, `reset_password`)
    /// and outcome (`sent`, `failed`).
    pub emails: IntCounterVec,
    /// SMS sends by provider and outcome (`sent`, `failed`, `limited`, `refused_country`…).
    pub sms_sends: IntCounterVec,
    /// SMS code verifications by outcome (`ok`, `bad_code`, `limited`…).
    pub sms_verifications: IntCounterVec,
    /// SMS delivery reports by status (`delivered`, `failed`… or `other`).
    pub sms_delivery: IntCounterVec,
}

impl Metrics {
    /// Registers the metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let logins = IntCounterVec::new(
            Opts::new(
                "portcullis_issuer_logins_total",
                "Logins by method and result",
            ),
            &["method", "result"],
        )?;
        let refreshes = IntCounterVec::new(
            Opts::new(
                "portcullis_issuer_refreshes_total",
                "Refresh-token uses by outcome",
            ),
            &["outcome"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new("portcullis_issuer_requests_total", "HTTP answers by status"),
            &["status"],
        )?;
        registry.register(Box::new(logins.clone()))?;
        registry.register(Box::new(refreshes.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        let emails = IntCounterVec::new(
            Opts::new(
                "portcullis_issuer_emails_total",
                "Mails of the email flows by kind and outcome",
            ),
            &["kind", "outcome"],
        )?;
        registry.register(Box::new(emails.clone()))?;
        let sms_sends = IntCounterVec::new(
            Opts::new(
                "portcullis_issuer_sms_sends_total",
                "SMS code sends by provider and outcome",
            ),
            &["provider", "outcome"],
        )?;
        let sms_verifications = IntCounterVec::new(
            Opts::new(
                "portcullis_issuer_sms_verifications_total",
                "SMS code verifications by outcome",
            ),
            &["outcome"],
        )?;
        let sms_delivery = IntCounterVec::new(
            Opts::new(
                "portcullis_issuer_sms_delivery_reports_total",
                "SMS delivery reports by status",
            ),
            &["status"],
        )?;
        registry.register(Box::new(sms_sends.clone()))?;
        registry.register(Box::new(sms_verifications.clone()))?;
        registry.register(Box::new(sms_delivery.clone()))?;
        // Every known label combination starts at 0, so the series exist from the start
        // (a counter that appears on its first event hides that event from `rate()`).
        for method in LOGIN_METHODS {
            for result in ["ok", "denied"] {
                logins.with_label_values(&[method, result]);
            }
        }
        for outcome in ["rotated", "grace", "reused", "invalid"] {
            refreshes.with_label_values(&[outcome]);
        }
        for kind in [
            crate::mail::MailKind::ConfirmEmail,
            crate::mail::MailKind::ChangeEmail,
            crate::mail::MailKind::ResetPassword,
        ] {
            for outcome in ["sent", "failed"] {
                emails.with_label_values(&[kind.as_str(), outcome]);
            }
        }
        Ok(Metrics {
            registry,
            logins,
            refreshes,
            requests,
            emails,
            sms_sends,
            sms_verifications,
            sms_delivery,
        })
    }

    /// Counts one login attempt of `method` (one of [`LOGIN_METHODS`]).
    pub fn login(&self, method: &str, ok: bool) {
        self.logins
            .with_label_values(&[method, if ok { "ok" } else { "denied" }])
            .inc();
    }

    /// Text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}
