//! Forwarding: header edits, trusted proxies and the client address, CORS.

pub(crate) mod client;
pub(crate) mod cors;
pub(crate) mod headers;
