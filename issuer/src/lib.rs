//! Portcullis issuer: accounts, logins, tokens and keys.
pub mod app;
pub mod config;
pub mod crypto;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod signing_keys;
pub mod sms;
pub mod store;
