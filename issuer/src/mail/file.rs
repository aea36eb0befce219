//! Development mailer: each message becomes one `.eml` file (readable by any mail client)
//! in a private directory, and a log line says where.

use std::path::PathBuf;

use super::{MailError, Outgoing};

/// Writes messages under a directory.
pub struct FileMailer {
    dir: PathBuf,
}

impl FileMailer {
    /// A mailer writing into `dir` (created on first use).
    pub fn new(dir: PathBuf) -> FileMailer {
        FileMailer { dir }
    }

    /// Writes `mail` as `<unix-nanos>-<kind>-<random>.eml` (mode 0600: it holds a live link).
    pub async fn send(&self, mail: &Outgoing) -> Result<(), MailError> {
        let dir = self.dir.clone();
        let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let name = format!(
            "{nanos}-{}-{:08x}.eml",
            mail.kind.as_str(),
            rand::random::<u32>()
        );
        let path = dir.join(name);
        let bytes = mail.message.formatted();
        let written = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write as _;
            std::fs::create_dir_all(&dir)?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                opts.mode(0o600);
            }
            opts.open(&written)?.write_all(&bytes)
        })
        .await
        .map_err(|e| MailError::Io(e.to_string()))?
        .map_err(|e| MailError::Io(format!("{}: {e}", path.display())))?;
        tracing::info!(
            target: "mail",
            kind = mail.kind.as_str(),
            to = %mail.to,
            file = %path.display(),
            "mail written (file mailer)"
        );
        Ok(())
    }
}
