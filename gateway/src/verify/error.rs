//! Why a token was refused.

use thiserror::Error;

/// Why a token was refused. `reason()` is the metrics label; `description()` is safe to
/// send to clients (never token contents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No token in the request.
    #[error("no token")]
    Missing,
    /// Larger than the configured limit.
    #[error("token too large")]
    TooLarge,
    /// Not a compact JWS with valid base64url JSON objects.
    #[error("malformed token")]
    Malformed,
    /// `alg` unknown, `none`, or not allowed for the issuer.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `typ` not accepted.
    #[error("wrong token type")]
    WrongType,
    /// `crit` names extensions we do not understand.
    #[error("unsupported critical header")]
    UnsupportedCrit,
    /// `iss` missing or not a trusted issuer.
    #[error("untrusted issuer")]
    UntrustedIssuer,
    /// The issuer has no usable keys (never fetched, or stale beyond `max_stale`).
    #[error("issuer keys unavailable")]
    KeysUnavailable,
    /// `kid` not in the issuer's key set (after a refetch).
    #[error("unknown key")]
    UnknownKid,
    /// No key of the right type for this token.
    #[error("no matching key")]
    NoMatchingKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed (beyond leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// A registered claim has the wrong type or an impossible value.
    #[error("invalid claim")]
    InvalidClaim,
    /// `aud` does not name an accepted audience.
    #[error("wrong audience")]
    WrongAudience,
    /// The key that verified a cached token was removed from the issuer's set.
    #[error("key revoked")]
    KeyRevoked,
    /// The token's session is on the issuer's revocation feed (logout, admin revoke…).
    #[error("session revoked")]
    SessionRevoked,
    /// The token's subject has a cut-off after the token was issued (user disabled, password
    /// reset, role removed…).
    #[error("subject revoked")]
    SubjectRevoked,
    /// The issuer's revocation feed is stale and its policy is `on_stale: refuse`.
    #[error("revocation feed stale")]
    RevocationStale,
}

impl AuthError {
    /// Short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed => "malformed",
            AuthError::AlgorithmNotAllowed => "algorithm",
            AuthError::WrongType => "wrong_type",
            AuthError::UnsupportedCrit => "crit",
            AuthError::UntrustedIssuer => "untrusted_issuer",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::NoMatchingKey => "no_matching_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::InvalidClaim => "invalid_claim",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::KeyRevoked => "key_revoked",
            AuthError::SessionRevoked => "session_revoked",
            AuthError::SubjectRevoked => "subject_revoked",
            AuthError::RevocationStale => "revocation_stale",
        }
    }

    /// Human-readable description for `WWW-Authenticate` and the JSON body.
    pub fn description(&self) -> &'static str {
        match self {
            AuthError::Missing => "a bearer token is required",
            AuthError::TooLarge => "the token is too large",
            AuthError::Malformed => "the token is malformed",
            AuthError::AlgorithmNotAllowed => "the token's signing algorithm is not accepted",
            AuthError::WrongType => "the token is not an access token",
            AuthError::UnsupportedCrit => "the token requires unsupported header extensions",
            AuthError::UntrustedIssuer => "the token's issuer is not trusted",
            AuthError::KeysUnavailable => "the issuer's signing keys are unavailable",
            AuthError::UnknownKid => "the token was signed with an unknown key",
            AuthError::NoMatchingKey => "no trusted key matches the token",
            AuthError::BadSignature => "the token signature is invalid",
            AuthError::Expired => "the token has expired",
            AuthError::NotYetValid => "the token is not valid yet",
            AuthError::IssuedInFuture => "the token was issued in the future",
            AuthError::InvalidClaim => "the token has an invalid claim",
            AuthError::WrongAudience => "the token is not meant for this audience",
            AuthError::KeyRevoked => "the token's signing key has been retired",
            AuthError::SessionRevoked | AuthError::SubjectRevoked => "the session was revoked",
            AuthError::RevocationStale => "the issuer's revocation feed is unavailable",
        }
    }
}
