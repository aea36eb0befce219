//! Portcullis gateway: a Pingora reverse proxy with YAML routes, nginx habits and (from the
//! verification issue on) in-process JWT checks.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod config;
pub mod cors;
pub mod headers;
pub mod health;
pub mod jwks;
pub mod key_refresh;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod server;
pub mod token;
pub mod upstream;
pub mod verify;
