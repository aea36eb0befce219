//! Logins and what follows them: one module per login method ([`password`], [`api_key`],
//! [`anonymous`], [`sms`]), OAuth clients and the OAuth endpoints' rules ([`clients`]),
//! sessions and refresh rotation ([`sessions`]), the caller's own account ([`profile`]), the
//! email links ([`email_links`]), typed rate-limit keys ([`limits`]) and the domain error every one of them answers with ([`AuthError`]).

pub mod anonymous;
pub mod api_key;
pub mod clients;
pub mod email_links;
mod error;
pub mod limits;
pub mod password;
pub mod profile;
pub mod sessions;
pub mod sms;

pub use error::AuthError;
pub use sessions::TokenPair;
