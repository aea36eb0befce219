//! Config plumbing the gateway and the issuer share, so that their YAML files and their
//! errors read alike: one grammar for durations and sizes, one config-error shape, one clock,
//! one notation for the networks of `trusted_proxies`, and one definition of a valid role.

pub mod claims;
pub mod config;
pub mod net;
pub mod time;
pub mod units;
