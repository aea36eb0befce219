//! The one interface every SMS provider implements, and the retry policy around it.

use std::time::Duration;

use async_trait::async_trait;

/// A message to deliver.
#[derive(Clone)]
pub struct OutgoingSms {
    /// Recipient, E.164.
    pub to: String,
    /// Rendered text.
    pub body: String,
    /// The bare code (only the webhook provider may pass it on, when configured to).
    pub code: String,
}

// Hand-written so that a code never reaches a log line through `{:?}`.
impl std::fmt::Debug for OutgoingSms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingSms")
            .field("to", &self.to)
            .field("body", &"<redacted>")
            .finish()
    }
}

/// What a provider reports after accepting a message.
#[derive(Debug, Clone, Default)]
pub struct SentSms {
    /// The provider's id of the message (Twilio's `sid`), the key of delivery reports.
    pub provider_id: Option<String>,
    /// The provider's initial status (`queued`, `accepted`…), when it says.
    pub status: Option<String>,
}

/// A failed delivery attempt.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying: connection failure, timeout, 5xx, 429.
    #[error("temporary provider failure: {0}")]
    Transient(String),
    /// Retrying would not help: 4xx, misconfiguration, a malformed answer.
    #[error("provider refused the message: {0}")]
    Permanent(String),
}

/// A way to deliver SMS.
#[async_trait]
pub trait SmsProvider: Send + Sync {
    /// Short name for metrics and the message log (`twilio`, `webhook`, `log`).
    fn name(&self) -> &'static str;

    /// One delivery attempt; the caller retries [`ProviderError::Transient`] failures.
    async fn send(&self, msg: &OutgoingSms) -> Result<SentSms, ProviderError>;
}

/// Sends with up to `retries` further attempts on transient failures, waiting 250 ms, 500 ms,
/// 1 s… (capped at 2 s) between them. Per-attempt timeouts are the provider's own, so the
/// total time is bounded by `(retries + 1) · timeout + backoff`.
pub async fn send_with_retries(
    provider: &dyn SmsProvider,
    msg: &OutgoingSms,
    retries: u32,
) -> Result<SentSms, ProviderError> {
    let mut attempt = 0;
    loop {
        match provider.send(msg).await {
            Ok(sent) => return Ok(sent),
            Err(ProviderError::Transient(why)) if attempt < retries => {
                tracing::warn!(
                    provider = provider.name(),
                    attempt = attempt + 1,
                    "SMS send failed, retrying: {why}"
                );
                let backoff = Duration::from_millis(250u64 << attempt.min(3));
                tokio::time::sleep(backoff.min(Duration::from_secs(2))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Classifies a `reqwest` transport error.
pub(crate) fn transport_error(e: reqwest::Error) -> ProviderError {
    // Without the URL: it may carry credentials or tokens.
    let e = e.without_url();
    if e.is_builder() {
        ProviderError::Permanent(e.to_string())
    } else {
        ProviderError::Transient(e.to_string())
    }
}

/// Classifies an HTTP status: 5xx and 429 are worth a retry, other 4xx are not.
pub(crate) fn status_error(status: reqwest::StatusCode, detail: String) -> ProviderError {
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        ProviderError::Transient(format!("{status}: {detail}"))
    } else {
        ProviderError::Permanent(format!("{status}: {detail}"))
    }
}

/// The HTTP client providers share: per-request timeout, no redirects (a redirect would
/// resend credentials elsewhere).
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis-issuer/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Permanent(format!("HTTP client: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    struct Flaky {
        calls: AtomicU32,
        fail_first: u32,
        permanent: bool,
    }

    #[async_trait]
    impl SmsProvider for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn send(&self, _: &OutgoingSms) -> Result<SentSms, ProviderError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                if self.permanent {
                    return Err(ProviderError::Permanent("no".into()));
                }
                return Err(ProviderError::Transient("later".into()));
            }
            Ok(SentSms::default())
        }
    }

    fn msg() -> OutgoingSms {
        OutgoingSms {
            to: "+12015550123".into(),
            body: "b".into(),
            code: "123456".into(),
        }
    }

    #[tokio::test]
    async fn retries_transient_failures_a_bounded_number_of_times() {
        let p = Flaky {
            calls: AtomicU32::new(0),
            fail_first: 2,
            permanent: false,
        };
        assert!(send_with_retries(&p, &msg(), 2).await.is_ok());
        assert_eq!(p.calls.load(Ordering::SeqCst), 3);
        let p = Flaky {
            calls: AtomicU32::new(0),
            fail_first: 10,
            permanent: false,
        };
        assert!(send_with_retries(&p, &msg(), 2).await.is_err());
        assert_eq!(p.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn never_retries_permanent_failures() {
        let p = Flaky {
            calls: AtomicU32::new(0),
            fail_first: 10,
            permanent: true,
        };
        assert!(send_with_retries(&p, &msg(), 3).await.is_err());
        assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn debug_hides_the_code() {
        let text = format!("{:?}", msg());
        assert!(!text.contains("123456"), "{text}");
    }
}
