//! The email-flow endpoints, registered with the public router: confirming an address by
//! link, resending that link, and resetting a forgotten password by link. The flows (tokens,
//! limits, background delivery) live in [`crate::auth::email_links`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{
    EmailDisabled, InvalidToken, NotJson, PayloadTooLarge, TooManyRequests, Unavailable,
};
use super::{bearer, json_body, ApiError, ClientIp, ErrorBody};
use crate::app::App;
use crate::auth::email_links;

/// The email-flow routes with their documentation (merged into the public ones).
pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(confirm))
        .routes(routes!(resend))
        .routes(routes!(forgot))
        .routes(routes!(reset))
}

/// The answer of `forgot` and `resend`, the same whatever the account.
const ACCEPTED: &str = "if an account with this address exists, a message has been sent to it";

/// A link token from a mail.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfirmBody {
    /// The token of the confirmation link.
    token: String,
}

/// The address that forgot its password.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ForgotBody {
    /// The account's email address (case-insensitive).
    #[schema(format = Email, max_length = 254, pattern = r"^[^@\s]+@\S*\.")]
    email: String,
}

/// A reset-link token and the new password.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResetBody {
    /// The token of the reset link.
    token: String,
    /// The new password, checked against the password policy.
    new_password: String,
}

/// Request accepted; the same answer for every address.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AcceptedBody {
    /// Always `accepted`.
    #[schema(example = "accepted")]
    pub status: String,
    /// Human-readable text.
    pub message: String,
}

/// The confirmed address.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ConfirmedBody {
    /// The account's (now confirmed) email address.
    pub email: String,
    /// When it was confirmed (seconds since the epoch).
    pub email_confirmed_at: i64,
}

fn accepted() -> (StatusCode, Json<AcceptedBody>) {
    (
        StatusCode::ACCEPTED,
        Json(AcceptedBody {
            status: "accepted".into(),
            message: ACCEPTED.into(),
        }),
    )
}

/// Confirms an email address with the token of a confirmation link: a new account's address,
/// or the new address of an email change, which then replaces the old one.
#[utoipa::path(
    post,
    path = "/v1/users/confirm",
    tag = "users",
    request_body(content = ConfirmBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The address is confirmed (and, for a change, now the account's)", body = ConfirmedBody),
        (status = 400, description = "Malformed body, or an unknown, used or expired token (`invalid_grant`)", body = ErrorBody),
        (status = 403, response = EmailDisabled),
        (status = 409, description = "The new address was taken by another account meanwhile (`conflict`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn confirm(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ConfirmedBody>, ApiError> {
    email_links::enabled(&app)?;
    let b: ConfirmBody = json_body(&headers, &body)?;
    let ip = ip.to_string();
    let (email, email_confirmed_at) = email_links::confirm(&app, &b.token, &ip).await?;
    Ok(Json(ConfirmedBody {
        email,
        email_confirmed_at,
    }))
}

/// Mails a new confirmation link to the caller's unconfirmed address (older links stop
/// working).
#[utoipa::path(
    post,
    path = "/v1/users/confirm/resend",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A new link is on its way", body = AcceptedBody),
        (status = 400, description = "The account has no address, or it is already confirmed", body = ErrorBody),
        (status = 401, response = InvalidToken),
        (status = 403, response = EmailDisabled),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn resend(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<AcceptedBody>), ApiError> {
    email_links::resend(&app, bearer(&headers), &ip.to_string()).await?;
    Ok(accepted())
}

/// Mails a password-reset link to the address when it belongs to an enabled account.
///
/// The answer is the same whether or not it does, and is given before anything is looked
/// up, so neither its content nor its timing tells which addresses have accounts.
#[utoipa::path(
    post,
    path = "/v1/password/forgot",
    tag = "users",
    request_body(content = ForgotBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted (for known and unknown addresses alike)", body = AcceptedBody),
        (status = 400, description = "Malformed body or invalid email address", body = ErrorBody),
        (status = 403, response = EmailDisabled),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn forgot(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<AcceptedBody>), ApiError> {
    email_links::enabled(&app)?;
    let b: ForgotBody = json_body(&headers, &body)?;
    email_links::forgot(&app, &b.email, &ip.to_string()).await?;
    Ok(accepted())
}

/// Sets a new password with the token of a reset link, and signs the account out everywhere.
#[utoipa::path(
    post,
    path = "/v1/password/reset",
    tag = "users",
    request_body(content = ResetBody, content_type = "application/json"),
    responses(
        (status = 204, description = "The password is changed and every session of the account is revoked"),
        (status = 400, description = "Malformed body, or an unknown, used or expired token (`invalid_grant`)", body = ErrorBody),
        (status = 403, response = EmailDisabled),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 422, description = "The new password does not meet the policy (`weak_password`); the link stays usable", body = ErrorBody),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn reset(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    email_links::enabled(&app)?;
    let b: ResetBody = json_body(&headers, &body)?;
    let ip = ip.to_string();
    email_links::reset(&app, &b.token, b.new_password, &ip).await?;
    Ok(StatusCode::NO_CONTENT)
}
