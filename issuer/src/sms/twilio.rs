//! Twilio's Messages API: `POST {base_url}/2010-04-01/Accounts/{sid}/Messages.json`, form
//! encoded, HTTP basic auth with the account SID and auth token.

use async_trait::async_trait;
use serde::Deserialize;

use super::provider::{
    http_client, status_error, transport_error, OutgoingSms, ProviderError, SentSms, SmsProvider,
};
use crate::config::sms::TwilioConfig;

/// Sends through Twilio.
pub struct Twilio {
    cfg: TwilioConfig,
    auth_token: String,
    client: reqwest::Client,
}

/// The fields of Twilio's answer we use (message resource, or error document).
#[derive(Deserialize)]
struct TwilioAnswer {
    sid: Option<String>,
    status: Option<String>,
    code: Option<i64>,
    message: Option<String>,
}

impl Twilio {
    /// A client for `cfg` authenticating with `auth_token`.
    pub fn new(
        cfg: TwilioConfig,
        auth_token: String,
        timeout: std::time::Duration,
    ) -> Result<Twilio, ProviderError> {
        Ok(Twilio {
            cfg,
            auth_token,
            client: http_client(timeout)?,
        })
    }

    /// The auth token, which also keys the signatures of Twilio's status callbacks.
    pub fn auth_token(&self) -> &str {
        &self.auth_token
    }

    /// The configured public URL of the status callback, if any.
    pub fn status_callback(&self) -> Option<&str> {
        self.cfg.status_callback.as_deref()
    }
}

#[async_trait]
impl SmsProvider for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    async fn send(&self, msg: &OutgoingSms) -> Result<SentSms, ProviderError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.cfg.base_url, self.cfg.account_sid
        );
        let mut form: Vec<(&str, &str)> = vec![("To", &msg.to), ("Body", &msg.body)];
        if let Some(from) = &self.cfg.from {
            form.push(("From", from));
        }
        if let Some(mg) = &self.cfg.messaging_service_sid {
            form.push(("MessagingServiceSid", mg));
        }
        if let Some(cb) = &self.cfg.status_callback {
            form.push(("StatusCallback", cb));
        }
        let resp = self
            .client
            .post(url)
            .basic_auth(&self.cfg.account_sid, Some(&self.auth_token))
            .form(&form)
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        let text = resp.text().await.map_err(transport_error)?;
        let answer: Option<TwilioAnswer> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let detail = match &answer {
                Some(TwilioAnswer {
                    code: Some(code),
                    message,
                    ..
                }) => format!(
                    "Twilio error {code}: {}",
                    message
                        .as_deref()
                        .unwrap_or("")
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
                _ => "no Twilio error document".to_string(),
            };
            return Err(status_error(status, detail));
        }
        let Some(TwilioAnswer {
            sid: Some(sid),
            status: msg_status,
            ..
        }) = answer
        else {
            return Err(ProviderError::Permanent(
                "Twilio accepted the message but answered no `sid`".into(),
            ));
        };
        Ok(SentSms {
            provider_id: Some(sid),
            status: msg_status,
        })
    }
}
