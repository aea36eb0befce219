//! Portcullis issuer: accounts, logins, tokens and keys.
//!
//! [`app::App::build`] assembles the service from its configuration; [`http`] serves it.
//! Business rules live in the services ([`accounts`], [`auth`], [`tokens`],
//! [`signing_keys`], [`sms`]); `http` only extracts, calls them and maps their errors.
pub mod accounts;
pub mod app;
pub mod auth;
pub mod client_addr;
pub mod config;
pub mod crypto;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod revocation;
pub mod signing_keys;
pub mod sms;
pub mod store;
pub mod tokens;
