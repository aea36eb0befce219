//! The edge's defences with nginx-like defaults: request-head bounds, connection timeouts
//! and a connection cap enforced on the raw connection ([`conn`], [`head`]), request body
//! limits (applied by the proxy), and per-route rate and concurrency limits ([`rules`] over
//! the bounded tables in `rate` and `inflight`).

pub mod conn;
pub(crate) mod head;
mod inflight;
mod rate;
pub mod rules;

use std::time::Duration;

pub use head::HeadLimits;
pub use rules::{LimitKey, LimitKind, LimitRule, LimitState};

/// Connection and request limits from `server.limits`; reloadable (a connection keeps the
/// limits in force when it was accepted).
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeLimits {
    /// Bounds of one request head.
    pub head: HeadLimits,
    /// Body limit of routes that set none (`None`: unlimited).
    pub max_body_size: Option<u64>,
    /// Total time to receive a request head.
    pub client_header_timeout: Duration,
    /// Longest pause between two reads of a request body.
    pub client_body_timeout: Duration,
    /// Idle keep-alive connections close after this; zero turns keep-alive off.
    pub keepalive_timeout: Duration,
    /// Requests served on one connection before it closes (0: no limit).
    pub keepalive_requests: u32,
    /// Open client connections per process; more are closed at once.
    pub max_connections: usize,
    /// Keys each rate-limit table remembers (the memory bound of rate limiting).
    pub rate_limit_keys: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            head: HeadLimits::default(),
            max_body_size: Some(1 << 20),
            client_header_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            keepalive_requests: 1000,
            max_connections: 10_000,
            rate_limit_keys: 100_000,
        }
    }
}
