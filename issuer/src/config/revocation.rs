//! The `revocation_feed:` section of `config/issuer.yaml`: who may read `GET /v1/revocations`
//! and how long a read waits for new records.
//!
//! ```yaml
//! revocation_feed:
//!   token_file: ../data/secrets/feed-token   # default: <secrets.dir>/feed-token
//!   max_wait: 25s
//!   leeway: 60s      # how long past its token's `exp` a record is kept (gateway leeway + clock skew)
//! ```
//!
//! The token file is shared with the gateways (their `revocation:` credential file); the
//! issuer creates it with a random token on first start when it does not exist.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use portcullis_common::config::ConfigError;

use super::parse_duration;

/// `max_wait` when the file does not set it: below the 30 s idle timeouts common in proxies
/// and load balancers, so a long poll is answered before anything between gives up on it.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(25);

/// The longest `max_wait` accepted: a reader's HTTP client must wait at least this long.
const MAX_MAX_WAIT: Duration = Duration::from_secs(300);

/// `leeway` when the file does not set it: the gateways' default `leeway` (30 s: a gateway
/// accepts a token that long after its `exp`) plus 30 s for clocks that disagree.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// File name of the generated feed token inside `secrets.dir`.
pub const DEFAULT_TOKEN_FILE: &str = "feed-token";

/// `revocation_feed:` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationFeedFile {
    token_file: Option<String>,
    max_wait: Option<Spanned<String>>,
    leeway: Option<Spanned<String>>,
}

/// The validated `revocation_feed:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationFeedConfig {
    /// The feed credential (created on first start when missing).
    pub token_file: PathBuf,
    /// Longest time a read waits for a new record before answering with none.
    pub max_wait: Duration,
    /// A record is kept this long after the access tokens it affects have expired: at least
    /// the largest `leeway` of the gateways reading the feed, plus the clock skew between
    /// issuers and gateways.
    pub leeway: Duration,
}

impl RevocationFeedFile {
    /// Validates the section read from `file`; relative paths are relative to `dir`, the token
    /// file defaults to `secrets_dir/feed-token`.
    pub(crate) fn compile(
        self,
        file: &str,
        dir: &Path,
        secrets_dir: &Path,
    ) -> Result<RevocationFeedConfig, ConfigError> {
        let max_wait = match &self.max_wait {
            None => DEFAULT_MAX_WAIT,
            Some(s) => {
                let d = parse_duration(&s.value).map_err(|e| {
                    ConfigError::at(file, s, format!("revocation_feed.max_wait: {e}"))
                })?;
                if d.is_zero() || d > MAX_MAX_WAIT {
                    return Err(ConfigError::at(
                        file,
                        s,
                        format!(
                            "revocation_feed.max_wait: between 1s and {}s",
                            MAX_MAX_WAIT.as_secs()
                        ),
                    ));
                }
                d
            }
        };
        let leeway = match &self.leeway {
            None => DEFAULT_LEEWAY,
            Some(s) => parse_duration(&s.value)
                .map_err(|e| ConfigError::at(file, s, format!("revocation_feed.leeway: {e}")))?,
        };
        Ok(RevocationFeedConfig {
            leeway,
            token_file: self
                .token_file
                .map(|p| dir.join(p))
                .unwrap_or_else(|| secrets_dir.join(DEFAULT_TOKEN_FILE)),
            max_wait,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_load as load;

    #[test]
    fn defaults_and_validation() {
        let c = load("secrets: {dir: s}\n").expect("empty section");
        assert!(c.revocation_feed.token_file.ends_with("s/feed-token"));
        assert_eq!(c.revocation_feed.max_wait.as_secs(), 25);
        assert_eq!(c.revocation_feed.leeway.as_secs(), 60);
        let c = load("revocation_feed: {token_file: t/feed, max_wait: 2s, leeway: 0s}\n")
            .expect("valid");
        assert_eq!(c.revocation_feed.leeway.as_secs(), 0);
        assert!(c.revocation_feed.token_file.ends_with("t/feed"));
        assert_eq!(c.revocation_feed.max_wait.as_secs(), 2);
        for bad in ["0s", "301s", "1500ms", "soon"] {
            let e = load(&format!("revocation_feed:\n  max_wait: {bad}\n")).unwrap_err();
            assert!(e.contains(":2:") && e.contains("max_wait"), "{bad}: {e}");
        }
        let e = load("revocation_feed: {url: x}\n").unwrap_err();
        assert!(e.contains("url"), "{e}");
    }
}
