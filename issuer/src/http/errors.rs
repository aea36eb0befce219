//! Domain errors to answers: one mapping per error enum, each keeping the status, code,
//! description and headers the API has always answered with.

use axum::http::{header, StatusCode};

use super::ApiError;
use crate::accounts::AccountError;
use crate::auth::clients::Scheme;
use crate::auth::AuthError;
use crate::revocation::FeedError;
use crate::signing_keys::KeyError;
use crate::sms::{StartError, VerifyError};

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        let text = e.to_string();
        match e {
            AccountError::InvalidEmail
            | AccountError::NoLogin
            | AccountError::MetadataNotObject => ApiError::bad_request(text),
            AccountError::WeakPassword(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "weak_password", text)
            }
            AccountError::InvalidRole(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_role", text)
            }
            AccountError::InvalidScope(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_scope", text)
            }
            AccountError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", text)
            }
            AccountError::HashTask => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", text)
            }
            AccountError::Crypto(e) => e.into(),
            AccountError::Store(e) => e.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let text = e.to_string();
        match e {
            AuthError::BadRequest(_) => ApiError::bad_request(text),
            AuthError::TooMany { retry_after } => ApiError::too_many(retry_after),
            AuthError::InvalidGrant(_) => ApiError::unauthorized("invalid_grant", text),
            AuthError::InvalidClient { scheme, .. } => invalid_client(scheme, text),
            AuthError::UnauthorizedClient(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "unauthorized_client", text)
            }
            AuthError::InvalidToken(_) => ApiError::unauthorized("invalid_token", text),
            AuthError::EmailNotConfirmed => {
                ApiError::new(StatusCode::FORBIDDEN, "email_not_confirmed", text)
            }
            AuthError::Disabled(_) => ApiError::new(StatusCode::FORBIDDEN, "disabled", text),
            AuthError::LinkRefused(_) | AuthError::LinkStale => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_grant", text)
            }
            AuthError::Internal => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", text)
            }
            AuthError::Sms(e) => e.into(),
            AuthError::Account(e) => e.into(),
            AuthError::Store(e) => e.into(),
            AuthError::Crypto(e) => e.into(),
        }
    }
}

impl From<FeedError> for ApiError {
    fn from(e: FeedError) -> Self {
        let text = e.to_string();
        match e {
            FeedError::Unauthorized => ApiError::unauthorized("invalid_token", text),
            FeedError::Store(e) => e.into(),
        }
    }
}

/// 401 `invalid_client` challenging with the scheme the client used (RFC 6749 §5.2); a
/// client that authenticated in the form (or not at all) is told about Basic, the scheme
/// this issuer prefers.
fn invalid_client(scheme: Scheme, text: String) -> ApiError {
    let challenge = match scheme {
        Scheme::Basic | Scheme::Form => "Basic",
        Scheme::ApiKey => "ApiKey",
        Scheme::Bearer => "Bearer",
    };
    let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client", text);
    e.headers.push((
        header::WWW_AUTHENTICATE,
        format!("{challenge} realm=\"{}\"", super::REALM),
    ));
    e
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        let text = e.to_string();
        match e {
            StartError::Phone(_) => ApiError::bad_request(text),
            StartError::Country(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", text),
            StartError::Limited { retry_after, which } => {
                let mut e = ApiError::too_many(retry_after);
                e.description = match which {
                    "min_interval" => {
                        "a code was sent to this number moments ago; wait before asking for another"
                            .into()
                    }
                    _ => "too many codes requested; try again later".into(),
                };
                e
            }
            StartError::Provider => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "SMS provider unavailable; no code was sent, try again later",
            ),
            StartError::Store(e) => e.into(),
        }
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        let text = e.to_string();
        match e {
            VerifyError::Phone(_) => ApiError::bad_request(text),
            VerifyError::BadCode => ApiError::new(StatusCode::BAD_REQUEST, "invalid_grant", text),
            VerifyError::Limited(retry) => ApiError::too_many(retry),
            VerifyError::SignupDisabled | VerifyError::Disabled => {
                ApiError::new(StatusCode::FORBIDDEN, "disabled", text)
            }
            VerifyError::Store(e) => e.into(),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        tracing::error!("key rotation failed: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "key rotation failed",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LinkRefusal;

    #[test]
    fn link_refusals_keep_their_answers() {
        let e = ApiError::from(AuthError::LinkRefused(LinkRefusal::Used));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "invalid_grant");
        assert_eq!(e.description, "this link has already been used");
        assert!(e.headers.is_empty());
    }

    #[test]
    fn bad_credentials_carry_the_bearer_challenge() {
        let e = ApiError::from(AuthError::InvalidGrant("wrong email, username or password"));
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.description, "wrong email, username or password");
        assert!(e.headers.iter().any(|(n, _)| n == header::WWW_AUTHENTICATE));
    }

    #[test]
    fn invalid_client_challenges_with_the_scheme_used() {
        for (scheme, challenge) in [
            (Scheme::Basic, "Basic realm=\"portcullis-issuer\""),
            (Scheme::Form, "Basic realm=\"portcullis-issuer\""),
            (Scheme::ApiKey, "ApiKey realm=\"portcullis-issuer\""),
            (Scheme::Bearer, "Bearer realm=\"portcullis-issuer\""),
        ] {
            let e = ApiError::from(AuthError::InvalidClient {
                scheme,
                reason: "no",
            });
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
            assert_eq!(e.code, "invalid_client");
            let got: Vec<&str> = e
                .headers
                .iter()
                .filter(|(n, _)| n == header::WWW_AUTHENTICATE)
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(got, [challenge], "{scheme:?}");
        }
    }

    #[test]
    fn lockout_is_a_429_with_retry_after() {
        let e = ApiError::from(AuthError::TooMany { retry_after: 0 });
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.description, "too many attempts; try again later");
        assert!(e
            .headers
            .iter()
            .any(|(n, v)| n == header::RETRY_AFTER && v == "1"));
    }
}
