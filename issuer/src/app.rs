//! The service state every handler, service and CLI command shares, how it is built from the
//! configuration ([`App::build`]), and its background maintenance tasks.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::IssuerConfig;
use crate::crypto::keypair::KeyAlg;
use crate::crypto::password::PasswordParams;
use crate::crypto::secrets;
use crate::signing_keys::{KeyError, KeyRing};
use crate::store::{Store, StoreError, StoreOptions};

/// Everything handlers need.
pub struct App {
    /// Configuration.
    pub cfg: IssuerConfig,
    /// Database.
    pub store: Store,
    /// Signing keys.
    pub keys: Arc<KeyRing>,
    /// HMAC pepper for API-key hashes.
    pub pepper: Vec<u8>,
    /// SHA-256 of the admin API token.
    pub admin_token_hash: String,
    /// argon2id parameters.
    pub password: PasswordParams,
    /// Bounds concurrent password hashing (argon2 is memory-hard by design).
    pub hash_slots: tokio::sync::Semaphore,
    /// Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// Delivers the mails of the email flows (see `cfg.email`).
    pub mailer: crate::mail::Mailer,
    /// SMS one-time-code login (`None` when the `sms:` section is absent).
    pub sms: Option<crate::sms::SmsLogin>,
    /// The revocation feed for gateways (`revocation_feed:`).
    pub revocations: crate::revocation::Feed,
}

/// Seconds since the Unix epoch (the one clock of the issuer).
pub use portcullis_common::time::unix_now as now;

/// Why the service could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A directory or secret file could not be created, read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// `creating`, `reading` or `writing`.
        what: &'static str,
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("opening the database: {0}")]
    Database(#[source] StoreError),
    /// `key_alg` names no supported algorithm.
    #[error("unsupported key algorithm")]
    KeyAlg,
    /// The signing keys could not be loaded or created.
    #[error("loading signing keys: {0}")]
    Keys(#[source] KeyError),
    /// The Prometheus registry refused a metric.
    #[error("registering metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The mailer's configuration is unusable.
    #[error("configuring the mailer: {0}")]
    Mailer(#[source] crate::mail::MailError),
    /// The SMS provider could not be set up.
    #[error("configuring SMS login: {0}")]
    Sms(#[source] crate::sms::SmsSetupError),
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.display().to_string();
    move |source| BuildError::Io { what, path, source }
}

/// Reads a secret file; `None` only when it does not exist. A secret that exists but cannot
/// be read is an error, never "absent": that would replace a generated secret, or store new
/// signing keys unencrypted although a key-encryption key is configured.
fn read_secret(path: &Path) -> Result<Option<Vec<u8>>, BuildError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("reading", path)(e)),
    }
}

/// Reads a generated secret, creating it (0600) on first start; `true` when just created.
fn secret_file(path: &Path, make: impl FnOnce() -> String) -> Result<(String, bool), BuildError> {
    if let Some(bytes) = read_secret(path)? {
        let text = String::from_utf8(bytes).map_err(|e| {
            io_error("reading", path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        return Ok((text.trim().to_string(), false));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
    }
    let value = make();
    std::fs::write(path, format!("{value}\n")).map_err(io_error("writing", path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error("writing", path))?;
    }
    Ok((value, true))
}

impl App {
    /// Opens the database, reads (or creates) the server secrets and signing keys, and sets up
    /// metrics, mailer and SMS login: everything the API, the admin API and the CLI use.
    pub async fn build(cfg: IssuerConfig) -> Result<Arc<App>, BuildError> {
        if let Some(p) = cfg.database_url.strip_prefix("sqlite://") {
            if let Some(dir) = Path::new(p).parent() {
                std::fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
            }
        }
        let store = Store::connect_with(
            &cfg.database_url,
            StoreOptions {
                sqlite_sync: cfg.sqlite_sync,
                revocation_window: crate::revocation::relevance_window(
                    cfg.access_ttl,
                    cfg.revocation_feed.leeway,
                ),
            },
        )
        .await
        .map_err(BuildError::Database)?;
        let (pepper, _) = secret_file(
            &cfg.secrets_dir.join("api-key-pepper"),
            secrets::random_token,
        )?;
        let admin_token_file = cfg.secrets_dir.join("admin-token");
        let (admin_token, created) = secret_file(&admin_token_file, secrets::random_token)?;
        if created {
            eprintln!(
                "portcullis-issuer: created the admin API token in {}",
                admin_token_file.display()
            );
        }
        // Shared with the gateways (their `revocation:` credential file).
        let feed_token_file = &cfg.revocation_feed.token_file;
        let (feed_token, created) = secret_file(feed_token_file, secrets::random_token)?;
        if created {
            eprintln!(
                "portcullis-issuer: created the revocation feed token in {}",
                feed_token_file.display()
            );
        }
        let kek = read_secret(&cfg.secrets_dir.join("key-encryption-key"))?
            .map(|k| k.trim_ascii().to_vec());
        let alg: KeyAlg = cfg.key_alg.parse().map_err(|_| BuildError::KeyAlg)?;
        // A retired key stays published until every token it signed has expired, plus margin.
        let retire_after = cfg.access_ttl.as_secs() as i64 + 300;
        let keys = KeyRing::load(
            &store,
            alg,
            kek,
            cfg.key_publish_lead.as_secs() as i64,
            retire_after,
        )
        .await
        .map_err(BuildError::Keys)?;
        let password = PasswordParams {
            memory_kib: cfg.argon_memory_kib,
            iterations: cfg.argon_iterations,
            parallelism: cfg.argon_parallelism,
        };
        Ok(Arc::new(App {
            metrics: crate::metrics::Metrics::new().map_err(BuildError::Metrics)?,
            mailer: crate::mail::Mailer::new(&cfg.email).map_err(BuildError::Mailer)?,
            sms: crate::sms::SmsLogin::build(cfg.sms.as_ref(), pepper.as_bytes())
                .map_err(BuildError::Sms)?,
            hash_slots: tokio::sync::Semaphore::new(cfg.max_concurrent_hashes),
            revocations: crate::revocation::Feed::new(&feed_token, cfg.revocation_feed.max_wait),
            store,
            keys,
            pepper: pepper.into_bytes(),
            admin_token_hash: secrets::hash_token(&admin_token),
            password,
            cfg,
        }))
    }

    /// Starts the background tasks of a serving replica: the signing-key lifecycle (every
    /// replica advances it idempotently and rotates on schedule), the hourly housekeeping
    /// (revocation records included), and the relay of other replicas' revocation records.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        crate::revocation::spawn_listener(self.store.clone(), self.cfg.database_url.clone());

        let ticker = self.clone();
        tokio::spawn(async move {
            let mut last_rotation = std::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Err(e) = ticker.keys.tick(&ticker.store).await {
                    tracing::warn!("signing-key maintenance failed: {e}");
                }
                if let Some(every) = ticker.cfg.key_rotate_every {
                    if last_rotation.elapsed() >= every {
                        last_rotation = std::time::Instant::now();
                        if let Err(e) = ticker.keys.rotate(&ticker.store).await {
                            tracing::warn!("scheduled key rotation failed: {e}");
                        }
                    }
                }
            }
        });

        // Housekeeping (store/housekeeping.rs): hourly, the first a minute after start.
        let keeper = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let mut hourly = tokio::time::interval(Duration::from_secs(3600));
            loop {
                hourly.tick().await;
                match keeper.store.purge_expired(now()).await {
                    Ok(p) if p.total() > 0 => tracing::info!(?p, "deleted ended rows"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("housekeeping failed: {e}"),
                }
            }
        });
    }
}
