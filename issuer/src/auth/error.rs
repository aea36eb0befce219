//! The domain error of logins, sessions and email links (`http` maps it to answers).

use crate::accounts::AccountError;
use crate::crypto::CryptoError;
use crate::store::{LinkRefusal, StoreError};
use crate::tokens::InvalidToken;

/// Why a login, a session operation or an email-link flow was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request lacks something or is malformed.
    #[error("{0}")]
    BadRequest(&'static str),
    /// A failure budget or rate limit is exhausted; retry after this many seconds.
    #[error("too many attempts; try again later")]
    TooMany {
        /// Seconds until the budget resets.
        retry_after: i64,
    },
    /// Wrong credentials or refresh token.
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// Client authentication failed (RFC 6749 §5.2 `invalid_client`).
    #[error("{reason}")]
    InvalidClient {
        /// How the client presented its credentials: the answer's challenge.
        scheme: super::clients::Scheme,
        /// What was wrong.
        reason: &'static str,
    },
    /// An authenticated client may not use this grant (RFC 6749 §5.2 `unauthorized_client`).
    #[error("{0}")]
    UnauthorizedClient(&'static str),
    /// A missing, invalid or revoked access token, or its account is gone or disabled.
    #[error("{0}")]
    InvalidToken(&'static str),
    /// Right password, but the address is unconfirmed and confirmation is required.
    #[error("confirm the email address first with the link mailed to it")]
    EmailNotConfirmed,
    /// The feature or the account is disabled.
    #[error("{0}")]
    Disabled(&'static str),
    /// An email link that is unknown, used or expired.
    #[error("{}", refusal_text(*.0))]
    LinkRefused(LinkRefusal),
    /// A confirmation link for an address the account no longer has.
    #[error("the account's address changed since this link was sent")]
    LinkStale,
    /// A background task that must finish did not.
    #[error("the request could not be completed")]
    Internal,
    /// SMS verification refused.
    #[error(transparent)]
    Sms(#[from] crate::sms::VerifyError),
    /// An account rule (email, password policy, hashing).
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The database failed (or a conflict).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn refusal_text(r: LinkRefusal) -> &'static str {
    match r {
        LinkRefusal::Unknown => {
            "unknown link token (a newer link replaces older ones); ask for a new link"
        }
        LinkRefusal::Used => "this link has already been used",
        LinkRefusal::Expired => "this link has expired; ask for a new one",
    }
}

impl From<InvalidToken> for AuthError {
    fn from(_: InvalidToken) -> Self {
        AuthError::InvalidToken("invalid or expired access token")
    }
}
