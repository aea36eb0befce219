//! Verification keys per issuer: parsing JWKS documents and key files, and keeping each
//! issuer's key set fresh.
//!
//! The hot path is [`IssuerKeys::current`]: one arc-swap load and a staleness check, no lock.
//! Fetching is serialised by a tokio mutex that only fetchers take, so a refresh, an
//! unknown-`kid` refetch and any number of waiting requests share one network round trip.
//!
//! Keys only ever come from the configured source. Nothing a token says (`jku`, `x5u`, `x5c`,
//! a URL in `kid`) is looked at here, and unknown `kid`s trigger at most one refetch per
//! cooldown, so a client cannot make the gateway fetch on its behalf. When no key set is
//! usable (none fetched yet, or the last good one is older than `max_stale`) the answer is
//! "no keys", never "anything goes".

use std::path::PathBuf;
use std::time::Duration;

pub(crate) mod fetch;
mod issuer_keys;
mod key;
mod parse;
mod refresher;
#[cfg(test)]
mod test_keys;

pub use issuer_keys::{IssuerKeyStats, IssuerKeys, KeySource, RefreshPolicy};
pub use key::{EcCurve, KeyFamily, KeyLookup, KeySet, VerifyKey};
pub use parse::{hmac_key, load_key_file, parse_jwks};
pub use refresher::KeyRefresher;

/// Why keys could not be loaded or fetched.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// The server answered something other than 200 (or 304 to a conditional request).
    #[error("{url}: HTTP status {status}, expected 200")]
    Status {
        /// What was fetched.
        url: String,
        /// The status received.
        status: u16,
    },
    /// No complete answer within `fetch_timeout`.
    #[error("{url}: no complete answer within {timeout:?}")]
    Timeout {
        /// What was fetched.
        url: String,
        /// The limit that passed.
        timeout: Duration,
    },
    /// Connecting, TLS or the HTTP exchange failed.
    #[error("{url}: {reason}")]
    Connect {
        /// What was fetched.
        url: String,
        /// The transport error, with its causes.
        reason: String,
    },
    /// The body was larger than `max_response_bytes`.
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge {
        /// What was fetched.
        url: String,
        /// The configured cap.
        limit: usize,
    },
    /// A 304 arrived but there is no key set it could refer to.
    #[error("{url}: 304 Not Modified but no key set is cached")]
    UnexpectedNotModified {
        /// What was fetched.
        url: String,
    },
    /// The document is not JSON.
    #[error("JWKS document is not JSON: {0}")]
    NotJson(String),
    /// The document is JSON but not an object with a `keys` array.
    #[error("not a JWKS document: no \"keys\" array")]
    NoKeysArray,
    /// Every key of a fetched document was skipped (the reasons were logged).
    #[error("JWKS document has no usable key (see the warnings for each skipped key)")]
    NoUsableKeys,
    /// The OIDC discovery document is unusable.
    #[error("discovery document {url}: {reason}")]
    Discovery {
        /// The discovery URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key source is not `http://`, `https://` or `unix:/socket:/path`.
    #[error("bad key source URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key file could not be read or holds no usable key.
    #[error("{}: {reason}", path.display())]
    File {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A PEM key file is malformed or holds something other than a supported public key.
    #[error("{}: bad PEM: {reason}", path.display())]
    BadPem {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An HMAC secret is too short to be safe.
    #[error("HMAC secret is {len} bytes; at least {min} are required")]
    HmacTooShort {
        /// Length given.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the JWKS HTTP client: {0}")]
    Client(String),
}
