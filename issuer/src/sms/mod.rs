//! Passwordless sign-in by SMS one-time code: number parsing ([`phone`]), codes ([`codes`]),
//! providers behind one trait ([`provider`]: [`twilio`], [`webhook`], [`log`]), Twilio's
//! callback signatures ([`signature`]); the `sms:` configuration is in
//! [`crate::config::sms`].
//!
//! [`SmsLogin`] holds the logic of `POST /v1/auth/sms/start` and `/verify` (the session a
//! verified code opens is started by `auth/sms.rs`); the HTTP layer (`http/sms.rs`)
//! only parses requests and shapes answers.

pub mod codes;
pub mod log;
pub mod phone;
pub mod provider;
pub mod signature;
pub mod twilio;
pub mod webhook;

use std::sync::Arc;

use crate::config::sms::{ProviderConfig, SmsConfig};
use provider::{OutgoingSms, SmsProvider};

use crate::auth::limits::{self, Budget, LimitKey};
use crate::metrics::Metrics;
use crate::store::{SmsMessage, Store, StoreError, User};
use portcullis_common::time::unix_now as now;

/// The SMS login service: configuration, code hasher and provider.
pub struct SmsLogin {
    /// The `sms:` configuration.
    pub cfg: SmsConfig,
    hasher: codes::CodeHasher,
    provider: Arc<dyn SmsProvider>,
    /// Set when the provider is Twilio: auth token and callback URL for delivery reports.
    twilio: Option<Arc<twilio::Twilio>>,
}

/// Why SMS login could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SmsSetupError {
    /// A secret file could not be read.
    #[error("{path}: cannot read: {source}")]
    Secret {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A secret file is empty.
    #[error("{0}: empty secret")]
    Empty(String),
    /// The HTTP client could not be built.
    #[error("{0}")]
    Client(#[from] provider::ProviderError),
}

/// Why `start` refused (mapped to HTTP by the handler).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Not a usable number.
    #[error("{0}")]
    Phone(phone::PhoneError),
    /// The number's country is not in `allowed_countries`.
    #[error("SMS codes are not sent to numbers of this country ({0})")]
    Country(String),
    /// A limit is exhausted; retry after this many seconds.
    #[error("{which} limit exhausted")]
    Limited {
        /// Seconds.
        retry_after: i64,
        /// Which limit (for logs and metrics).
        which: &'static str,
    },
    /// The provider failed; nothing was left behind.
    #[error("SMS provider unavailable")]
    Provider,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why `verify` refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Not a usable number.
    #[error("{0}")]
    Phone(phone::PhoneError),
    /// Wrong, expired, used, cancelled or exhausted code (one answer for all).
    #[error("the code is wrong, expired or already used; request a new one")]
    BadCode,
    /// Too many verifications from this client.
    #[error("too many verifications")]
    Limited(i64),
    /// The code was right but the number has no account and sign-up is off.
    #[error("no account uses this phone number and sign-up by SMS is disabled")]
    SignupDisabled,
    /// The account is disabled.
    #[error("the account is disabled")]
    Disabled,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn read_secret(path: &std::path::Path) -> Result<String, SmsSetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| SmsSetupError::Secret {
        path: path.display().to_string(),
        source,
    })?;
    let s = text.trim().to_string();
    if s.is_empty() {
        return Err(SmsSetupError::Empty(path.display().to_string()));
    }
    Ok(s)
}

impl SmsLogin {
    /// Builds the service for `cfg` (`None`: SMS login is off); `server_secret` keys the code
    /// hashes. Reads the provider's secret files.
    pub fn build(
        cfg: Option<&SmsConfig>,
        server_secret: &[u8],
    ) -> Result<Option<SmsLogin>, SmsSetupError> {
        let Some(cfg) = cfg else { return Ok(None) };
        let mut tw = None;
        let provider: Arc<dyn SmsProvider> = match &cfg.provider {
            ProviderConfig::Log { file } => Arc::new(log::LogProvider::new(file.clone())),
            ProviderConfig::Twilio(t) => {
                let token = read_secret(&t.auth_token_file)?;
                let p = Arc::new(twilio::Twilio::new(t.clone(), token, cfg.timeout)?);
                tw = Some(p.clone());
                p
            }
            ProviderConfig::Webhook {
                url,
                secret_file,
                include_code,
            } => Arc::new(webhook::Webhook::new(
                url.clone(),
                read_secret(secret_file)?.into_bytes(),
                *include_code,
                cfg.timeout,
            )?),
        };
        Ok(Some(SmsLogin {
            cfg: cfg.clone(),
            hasher: codes::CodeHasher::new(server_secret),
            provider,
            twilio: tw,
        }))
    }

    /// The Twilio provider, when that is the one configured.
    pub fn twilio(&self) -> Option<&twilio::Twilio> {
        self.twilio.as_deref()
    }

    /// Parses a number the way both endpoints do.
    pub fn parse_phone(
        &self,
        input: &str,
        region: Option<&str>,
    ) -> Result<phone::Phone, phone::PhoneError> {
        phone::parse(input, region.or(self.cfg.default_region.as_deref()))
    }

    /// Sends a fresh code to `input` unless a limit forbids it. Succeeds identically whether
    /// or not the number has an account; with sign-up off, numbers without an account get no
    /// SMS (nothing to log in to), but the same answer.
    pub async fn start(
        &self,
        store: &Store,
        metrics: &Metrics,
        input: &str,
        region: Option<&str>,
        ip: &str,
    ) -> Result<(), StartError> {
        let phone = self.parse_phone(input, region).map_err(StartError::Phone)?;
        if self.cfg.test_numbers.contains_key(&phone.e164) {
            // Reviewers' numbers: a fixed code, nothing sent, nothing spent.
            return Ok(());
        }
        let region = phone.region.clone().unwrap_or_default();
        if !self.cfg.allowed_countries.is_empty() && !self.cfg.allowed_countries.contains(&region) {
            self.count_send(metrics, "refused_country");
            return Err(StartError::Country(if region.is_empty() {
                "this number's country is unknown".into()
            } else {
                region
            }));
        }
        let t = now();
        let min_interval = self.cfg.min_interval.as_secs() as i64;
        if let Some(retry_after) = store
            .sms_claim_interval(&phone.e164, min_interval, t)
            .await?
        {
            self.count_send(metrics, "limited");
            return Err(StartError::Limited {
                retry_after,
                which: "min_interval",
            });
        }
        let result = self.budgets_and_send(store, metrics, &phone, ip, t).await;
        if result.is_err() {
            // Nothing left the building: the next attempt must not wait out the interval.
            if let Err(e) = store.sms_release_interval(&phone.e164).await {
                tracing::warn!("releasing the SMS interval failed: {e}");
            }
        }
        result
    }

    async fn budgets_and_send(
        &self,
        store: &Store,
        metrics: &Metrics,
        phone: &phone::Phone,
        ip: &str,
        t: i64,
    ) -> Result<(), StartError> {
        // Per-IP first: one abusive client must not eat a victim's per-phone or the global budget.
        let budgets: [(LimitKey, i64, &'static str); 3] = [
            (
                LimitKey::SmsSendIp(ip),
                self.cfg.max_sends_per_ip_per_hour,
                "per_ip",
            ),
            (
                LimitKey::SmsSendPhone(&phone.e164),
                self.cfg.max_sends_per_phone_per_hour,
                "per_phone",
            ),
            (
                LimitKey::SmsSendGlobal,
                self.cfg.max_sends_per_hour,
                "global",
            ),
        ];
        for (key, max, which) in budgets {
            let check = limits::hit(store, key, Budget::per_hour(max), t).await?;
            if !check.admitted {
                self.count_send(metrics, "limited");
                tracing::info!(phone = %phone.e164, ip, limit = which, "SMS send refused: budget exhausted");
                return Err(StartError::Limited {
                    retry_after: check.retry_after,
                    which,
                });
            }
        }
        if !self.cfg.signup && store.find_user_by_phone(&phone.e164).await?.is_none() {
            // Same answer as a real send, so /start does not reveal which numbers have accounts.
            self.count_send(metrics, "skipped_no_account");
            return Ok(());
        }
        let code = codes::generate(self.cfg.code_length);
        let ttl = self.cfg.code_ttl.as_secs() as i64;
        let id = store
            .sms_insert_code(
                &phone.e164,
                &self.hasher.hash(&phone.e164, &code),
                t,
                t + ttl,
            )
            .await?;
        let minutes = ((ttl + 59) / 60).max(1);
        let msg = OutgoingSms {
            to: phone.e164.clone(),
            body: self
                .cfg
                .message
                .replace("{code}", &code)
                .replace("{minutes}", &minutes.to_string()),
            code,
        };
        match provider::send_with_retries(self.provider.as_ref(), &msg, self.cfg.retries).await {
            Ok(sent) => {
                let t2 = now();
                let message = SmsMessage {
                    id: crate::crypto::secrets::random_id(),
                    provider: self.provider.name().to_string(),
                    provider_id: sent.provider_id,
                    phone: phone.e164.clone(),
                    status: bounded_status(sent.status.as_deref().unwrap_or("sent")),
                    error_code: None,
                    created_at: t2,
                    updated_at: t2,
                };
                store.sms_activate_code(&id, &message, t2).await?;
                self.count_send(metrics, "sent");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(provider = self.provider.name(), phone = %phone.e164, "SMS send failed: {e}");
                self.count_send(metrics, "failed");
                store.sms_fail_code(&id).await?;
                Err(StartError::Provider)
            }
        }
    }

    fn count_send(&self, metrics: &Metrics, outcome: &str) {
        metrics
            .sms_sends
            .with_label_values(&[self.provider.name(), outcome])
            .inc();
    }

    /// Checks `code` for `input` and returns the account to log in (created on first
    /// verification when sign-up is on).
    pub async fn verify(
        &self,
        store: &Store,
        input: &str,
        region: Option<&str>,
        code: &str,
        ip: &str,
    ) -> Result<User, VerifyError> {
        let phone = self
            .parse_phone(input, region)
            .map_err(VerifyError::Phone)?;
        let t = now();
        let per_ip = Budget::per_hour(self.cfg.max_verifications_per_ip_per_hour);
        let check = limits::hit(store, LimitKey::SmsVerifyIp(ip), per_ip, t).await?;
        if !check.admitted {
            return Err(VerifyError::Limited(check.retry_after));
        }
        let code = code.trim();
        if let Some(fixed) = self.cfg.test_numbers.get(&phone.e164) {
            // Fixed codes are guessable in principle: the same attempt limit, per hour.
            let key = LimitKey::SmsTestNumber(&phone.e164);
            let attempts = Budget::per_hour(self.cfg.max_attempts);
            if !limits::hit(store, key, attempts, t).await?.admitted
                || !crate::crypto::secrets::constant_time_eq(code, fixed)
            {
                return Err(VerifyError::BadCode);
            }
            limits::reset(store, key).await?;
        } else {
            // A malformed code still spends an attempt: no free probing.
            let Some((id, hash)) = store
                .sms_spend_attempt(&phone.e164, t, self.cfg.max_attempts)
                .await?
            else {
                return Err(VerifyError::BadCode);
            };
            let ok = codes::well_formed(code, self.cfg.code_length)
                && self.hasher.matches(&phone.e164, code, &hash);
            if !ok || !store.sms_consume_code(&id, now()).await? {
                return Err(VerifyError::BadCode);
            }
        }
        let user = match store.find_user_by_phone(&phone.e164).await? {
            Some(u) => u,
            None if !self.cfg.signup => return Err(VerifyError::SignupDisabled),
            None => match store
                .create_user(&crate::store::NewUser {
                    phone: Some(phone.e164.clone()),
                    ..Default::default()
                })
                .await
            {
                Ok(u) => u,
                // Two first verifications racing: the other one created it.
                Err(StoreError::Conflict(_)) => store
                    .find_user_by_phone(&phone.e164)
                    .await?
                    .ok_or(VerifyError::BadCode)?,
                Err(e) => return Err(e.into()),
            },
        };
        if user.disabled {
            return Err(VerifyError::Disabled);
        }
        Ok(user)
    }
}

/// A provider's status word, cut to 32 characters of `[a-z0-9_-]` (statuses arrive from the
/// network and end up in the database and in metric labels).
pub fn bounded_status(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(32)
        .collect::<String>()
        .to_ascii_lowercase();
    if cleaned.is_empty() {
        "unknown".into()
    } else {
        cleaned
    }
}
