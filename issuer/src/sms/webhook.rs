//! The generic webhook provider: a JSON POST `{to, body, code?, sent_at}` to a configured URL,
//! signed with `X-Portcullis-Signature: sha256=<hex HMAC-SHA256(secret, timestamp.body)>` and
//! `X-Portcullis-Timestamp: <unix seconds>`. A 2xx answer accepts the message; a JSON answer
//! with a string `id` names it for the message log.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::provider::{
    http_client, status_error, transport_error, OutgoingSms, ProviderError, SentSms, SmsProvider,
};
use super::signature::webhook_signature;

/// Posts messages to a URL.
pub struct Webhook {
    url: String,
    secret: Vec<u8>,
    include_code: bool,
    client: reqwest::Client,
}

impl Webhook {
    /// A provider posting to `url`, signing with `secret`.
    pub fn new(
        url: String,
        secret: Vec<u8>,
        include_code: bool,
        timeout: std::time::Duration,
    ) -> Result<Webhook, ProviderError> {
        Ok(Webhook {
            url,
            secret,
            include_code,
            client: http_client(timeout)?,
        })
    }
}

#[async_trait]
impl SmsProvider for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, msg: &OutgoingSms) -> Result<SentSms, ProviderError> {
        let ts = portcullis_common::time::unix_now();
        let mut doc = json!({"to": msg.to, "body": msg.body, "sent_at": ts});
        if self.include_code {
            doc["code"] = json!(msg.code);
        }
        let body = doc.to_string().into_bytes();
        let resp = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Portcullis-Timestamp", ts.to_string())
            .header(
                "X-Portcullis-Signature",
                webhook_signature(&self.secret, ts, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(status_error(
                status,
                text.chars().take(200).collect::<String>(),
            ));
        }
        let id = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
            .filter(|id| !id.is_empty() && id.len() <= 128);
        Ok(SentSms {
            provider_id: id,
            status: Some("sent".into()),
        })
    }
}
