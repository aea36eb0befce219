//! The error answers many operations share, declared once as reusable
//! `components/responses` of the OpenAPI document and referenced from the operations'
//! `#[utoipa::path]` (`(status = 413, response = PayloadTooLarge)`). Answers whose meaning
//! differs per operation keep their own description there.
//!
//! Each type only names a response for the document: the body is always an
//! [`ErrorBody`], written by [`super::ApiError`].

// The types are never built, so rustc calls their one field unread.
#![allow(dead_code)]

use utoipa::ToResponse;

use super::ErrorBody;

/// Malformed body (`invalid_request`)
#[derive(ToResponse)]
pub(crate) struct MalformedBody(ErrorBody);

/// Missing, invalid or revoked access token (`invalid_token`)
#[derive(ToResponse)]
pub(crate) struct InvalidToken(ErrorBody);

/// Body over 64 KiB (`payload_too_large`)
#[derive(ToResponse)]
pub(crate) struct PayloadTooLarge(ErrorBody);

/// Body sent without `Content-Type: application/json` (`invalid_request`)
#[derive(ToResponse)]
pub(crate) struct NotJson(ErrorBody);

/// Body not `application/x-www-form-urlencoded` (`invalid_request`)
#[derive(ToResponse)]
pub(crate) struct NotForm(ErrorBody);

/// Too many requests or failed attempts (`too_many_requests`)
#[derive(ToResponse)]
#[response(headers(("Retry-After" = i64, description = "Seconds until a request would be admitted again")))]
pub(crate) struct TooManyRequests(ErrorBody);

/// The database is unavailable (`unavailable`)
#[derive(ToResponse)]
pub(crate) struct Unavailable(ErrorBody);

/// No token, or neither the admin token nor a valid access token (`invalid_token`)
#[derive(ToResponse)]
pub(crate) struct AdminUnauthorized(ErrorBody);

/// An access token without role `admin`, or whose session is revoked (`forbidden`)
#[derive(ToResponse)]
pub(crate) struct AdminForbidden(ErrorBody);

/// No such user (`not_found`)
#[derive(ToResponse)]
pub(crate) struct UserNotFound(ErrorBody);

/// The email flows are disabled (`disabled`)
#[derive(ToResponse)]
pub(crate) struct EmailDisabled(ErrorBody);

/// Client authentication failed, or none was presented (`invalid_client`)
#[derive(ToResponse)]
#[response(headers((
    "WWW-Authenticate" = String,
    description = "The scheme the client used (`Basic`, `ApiKey`, or `Bearer` for the admin \
                   token), with `realm=\"portcullis-issuer\"`; `Basic` when the credentials \
                   were in the form or missing"
)))]
pub(crate) struct InvalidClient(ErrorBody);

/// A role or scope outside the grammar every gateway accepts (`invalid_role`, `invalid_scope`)
#[derive(ToResponse)]
pub(crate) struct InvalidRole(ErrorBody);

/// No feed credential, or a wrong one (`invalid_token`)
#[derive(ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"portcullis-issuer\"`")))]
pub(crate) struct FeedUnauthorized(ErrorBody);
