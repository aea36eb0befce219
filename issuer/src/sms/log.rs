//! The development provider: logs each message and appends `<to>\t<code>\t<body>` to a file,
//! so a local walk-through can read the code. Never for production: codes end up in logs.

use std::io::Write as _;
use std::path::PathBuf;

use async_trait::async_trait;

use super::provider::{OutgoingSms, ProviderError, SentSms, SmsProvider};

/// Logs messages instead of sending them.
pub struct LogProvider {
    file: Option<PathBuf>,
}

impl LogProvider {
    /// A provider appending to `file` when given.
    pub fn new(file: Option<PathBuf>) -> LogProvider {
        LogProvider { file }
    }
}

#[async_trait]
impl SmsProvider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn send(&self, msg: &OutgoingSms) -> Result<SentSms, ProviderError> {
        tracing::info!(target: "sms", to = %msg.to, code = %msg.code, "SMS (log provider): {}", msg.body);
        if let Some(path) = &self.file {
            let line = format!(
                "{}\t{}\t{}\n",
                msg.to,
                msg.code,
                msg.body.replace('\n', " ")
            );
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                f.write_all(line.as_bytes())
            })
            .await
            .map_err(|e| ProviderError::Permanent(format!("log file: {e}")))?
            .map_err(|e| ProviderError::Permanent(format!("log file: {e}")))?;
        }
        Ok(SentSms {
            provider_id: Some(format!("log-{}", crate::crypto::secrets::random_id())),
            status: Some("delivered".into()),
        })
    }
}
