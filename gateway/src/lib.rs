//! Portcullis gateway: a Pingora reverse proxy that verifies JWTs in-process and enforces
//! YAML route rules.
//!
//! The binary is [`cli_main`]. The rest of this crate root is the plugin API: what a Pingora
//! `ProxyHttp` of your own needs to verify tokens the way the gateway does (see
//! `examples/plugin.rs`):
//!
//! - keys: [`IssuerKeys`] from a [`KeySource`] under a [`RefreshPolicy`], kept fresh by a
//!   [`KeyRefresher`] (a Pingora background service);
//! - verification: a [`Verifier`] over [`Issuer`]s with a shared [`TokenCache`];
//! - per-route rules: [`RoutePolicy`] and [`AuthMode`];
//! - the request step: [`authenticate`] → [`Outcome`] (an [`Identity`] or a [`Rejection`]);
//! - identity headers: [`IdentityPrefix`] (strip what clients forged) and
//!   [`IdentityHeaderNames`] (the names the identity is written under).
//!
//! Every other module is private to the crate.

#![warn(missing_docs)]

mod access_log;
mod admin;
mod auth;
mod cli;
mod config;
mod forwarding;
mod jwks;
mod key_refresh;
mod limits;
mod metrics;
mod proxy;
mod reload;
mod revocation;
mod routing;
mod runtime;
mod server;
mod upstream;
mod verify;

#[cfg(test)]
mod properties;

pub use auth::identity::{IdentityPrefix, IDENTITY_SUFFIXES};
pub use auth::policy::{ArrayFormat, ClaimRule, ClaimTest, Requirement, RoutePolicy, TokenSources};
pub use auth::{authenticate, Identity, IdentityHeaderNames, Outcome, Rejection};
pub use cli::cli_main;
pub use jwks::{
    hmac_key, load_key_file, parse_jwks, EcCurve, IssuerKeyStats, IssuerKeys, JwksError, KeyFamily,
    KeyLookup, KeyRefresher, KeySet, KeySource, RefreshPolicy, VerifyKey,
};
pub use revocation::{
    FeedError, FeedSpec, FeedUrl, RevocationFollower, RevocationStats, Revocations, StalePolicy,
};
pub use routing::AuthMode;
pub use verify::{AuthError, Issuer, TokenCache, VerifiedToken, Verifier, VerifyObserver};

/// Internals the criterion benches measure (route matching, header edits); not an API.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod bench_internals {
    pub use crate::forwarding::headers::HeaderOps;

    /// Loads `n` revoked sessions named `{prefix}{i}` into `r`.
    pub fn load_revoked_sessions(r: &crate::Revocations, prefix: &str, n: usize) {
        r.load_sessions(prefix, n)
    }

    /// The per-request revocation check alone.
    pub fn revocation_check(
        r: &crate::Revocations,
        t: &crate::VerifiedToken,
    ) -> Result<(), crate::AuthError> {
        r.check_token(t)
    }
    pub use crate::routing::{
        Action, FixedResponse, HostHeader, HostMatch, PathMatch, PathRewrite, Route, RouteMatch,
        Router,
    };
}
