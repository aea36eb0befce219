//! SMS one-time-code login (`/v1/auth/sms/start`, `/v1/auth/sms/verify`), Twilio's delivery
//! reports (`/v1/webhooks/sms-status`) and the admin listing of sent messages
//! (`/admin/sms/messages`). The logic lives in [`crate::sms::SmsLogin`].

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{
    AdminForbidden, AdminUnauthorized, NotForm, NotJson, PayloadTooLarge, TooManyRequests,
    Unavailable,
};
use super::{json_body, ApiError, ClientIp, ErrorBody};
use crate::app::{now, App};
use crate::auth::{self, TokenPair};
use crate::sms::{bounded_status, phone, signature, SmsLogin};
use crate::store::SmsMessage;

/// The public SMS routes with their documentation (merged into the public ones).
pub(super) fn public_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(sms_start))
        .routes(routes!(sms_verify))
        .routes(routes!(sms_status))
}

/// The admin SMS routes with their documentation, merged into the admin ones (behind its
/// token check).
pub(super) fn admin_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(list_messages))
}

/// `region`: the ISO 3166 alpha-2 codes the phone-number parser knows (the handlers accept
/// them in any case, with surrounding spaces).
fn region_schema() -> utoipa::openapi::Object {
    let codes: Vec<String> = (b'A'..=b'Z')
        .flat_map(|a| (b'A'..=b'Z').map(move |b| String::from_utf8(vec![a, b]).expect("ASCII")))
        .filter(|code| phone::region(code).as_deref() == Some(code.as_str()))
        .collect();
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(codes))
        .description(Some("ISO 3166 alpha-2 region to read a national number in"))
        .examples([serde_json::json!("US")])
        .build()
}

fn enabled(app: &App) -> Result<&SmsLogin, ApiError> {
    app.sms.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "disabled",
            "SMS login is not enabled on this issuer",
        )
    })
}

/// A request for a code.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SmsStart {
    /// The phone number, international (`+1 201 555 0123`, E.164 with optional spaces,
    /// dashes, dots or parentheses; at most 64 characters) or national with `region`; it must
    /// be a valid number of its country's numbering plan, without an extension.
    // No pattern: which numbers exist is numbering-plan data (libphonenumber's) that no
    // pattern states; `format: phone` names that, and the description gives the spelling.
    #[schema(format = "phone")]
    #[schema(example = "+12015550123")]
    phone: String,
    /// ISO 3166 alpha-2 region to read a national number in (default: `sms.default_region`).
    #[schema(schema_with = region_schema)]
    region: Option<String>,
}

/// The answer of `/v1/auth/sms/start`: the same for every accepted number.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SmsStarted {
    /// Always `sent`.
    #[schema(example = "sent")]
    pub status: String,
    /// Seconds the code stays valid.
    pub expires_in: u64,
}

/// Sends a one-time code by SMS.
///
/// The answer is the same whether or not the number has an account. A new code cancels the
/// previous one. Limits: a minimum interval per number, hourly budgets per number, per client
/// IP and in total (429 with `Retry-After`); numbers outside `sms.allowed_countries` are
/// refused.
#[utoipa::path(
    post,
    path = "/v1/auth/sms/start",
    tag = "auth",
    request_body(content = SmsStart, content_type = "application/json"),
    responses(
        (status = 202, description = "A code is on its way", body = SmsStarted),
        (status = 400, description = "Malformed body or not a valid phone number (`invalid_request`)", body = ErrorBody),
        (status = 403, description = "The number's country is not allowed (`forbidden`), or SMS login is off (`disabled`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 429, response = TooManyRequests),
        (status = 503, description = "The SMS provider or the database is unavailable (`unavailable`); nothing was sent", body = ErrorBody),
    )
)]
async fn sms_start(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SmsStarted>), ApiError> {
    let sms = enabled(&app)?;
    let b: SmsStart = json_body(&headers, &body)?;
    let ip = ip.to_string();
    sms.start(&app.store, &app.metrics, &b.phone, b.region.as_deref(), &ip)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SmsStarted {
            status: "sent".into(),
            expires_in: sms.cfg.code_ttl.as_secs(),
        }),
    ))
}

/// A code to check.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SmsVerify {
    /// The phone number the code was sent to (any spelling of it).
    // No pattern: which numbers exist is numbering-plan data (libphonenumber's) that no
    // pattern states; `format: phone` names that, and the description gives the spelling.
    #[schema(format = "phone")]
    #[schema(example = "+12015550123")]
    phone: String,
    /// The code from the SMS.
    #[schema(example = "123456")]
    code: String,
    /// ISO 3166 alpha-2 region to read a national number in.
    #[schema(schema_with = region_schema)]
    region: Option<String>,
}

/// Checks an SMS code and logs in (`amr: ["sms"]`).
///
/// The first verification of a number creates its account when `sms.signup` is on. A code is
/// single-use and dies after `sms.max_attempts` wrong attempts or `sms.code_ttl`.
#[utoipa::path(
    post,
    path = "/v1/auth/sms/verify",
    tag = "auth",
    request_body(content = SmsVerify, content_type = "application/json"),
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 400, description = "Malformed body or invalid number (`invalid_request`); wrong, expired, used or exhausted code (`invalid_grant`)", body = ErrorBody),
        (status = 403, description = "No account for this number and sign-up by SMS is off, the account is disabled, or SMS login is off (`disabled`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotJson),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn sms_verify(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenPair>, ApiError> {
    let sms = enabled(&app)?;
    let b: SmsVerify = json_body(&headers, &body)?;
    let ip = ip.to_string();
    let pair =
        auth::sms::verify_and_login(&app, sms, &b.phone, b.region.as_deref(), &b.code, &ip).await?;
    Ok(Json(pair))
}

// The handler reads every pair, not this type: the signature covers them all, unknown ones
// included, and it takes Twilio's older `SmsSid`/`SmsStatus` names too.
/// Twilio's status callback (form-encoded; only the fields used are listed).
#[derive(ToSchema)]
pub struct SmsStatusForm {
    /// The message SID Twilio answered when the message was created.
    #[schema(rename = "MessageSid")]
    pub message_sid: String,
    /// `queued`, `sent`, `delivered`, `undelivered`, `failed`…
    #[schema(rename = "MessageStatus")]
    pub message_status: String,
    /// Twilio's error code for failed deliveries.
    #[schema(rename = "ErrorCode")]
    pub error_code: Option<String>,
}

/// Statuses counted under their own metric label; anything else counts as `other`.
const KNOWN_STATUSES: [&str; 9] = [
    "accepted",
    "scheduled",
    "queued",
    "sending",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "canceled",
];

/// Twilio's delivery report for a message sent by this issuer.
///
/// Authenticated by `X-Twilio-Signature` (HMAC-SHA1 with the auth token over the configured
/// `sms.twilio.status_callback` URL and the sorted form parameters); anything else is refused
/// with 403 and stored nowhere.
#[utoipa::path(
    post,
    path = "/v1/webhooks/sms-status",
    tag = "auth",
    request_body(content = SmsStatusForm, content_type = "application/x-www-form-urlencoded"),
    params(("X-Twilio-Signature" = String, Header, description = "Twilio's request signature")),
    responses(
        (status = 204, description = "Recorded (or about a message this issuer does not know)"),
        (status = 400, description = "Malformed form or missing `MessageSid` / `MessageStatus`", body = ErrorBody),
        (status = 403, description = "Missing or invalid signature, or delivery reports not configured (`forbidden`)", body = ErrorBody),
        (status = 404, description = "The provider is not Twilio (`not_found`)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotForm),
        (status = 503, response = Unavailable),
    )
)]
async fn sms_status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let twilio = app.sms.as_ref().and_then(SmsLogin::twilio).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "delivery reports are only taken from the Twilio provider",
        )
    })?;
    let forbidden = |why: &str| ApiError::new(StatusCode::FORBIDDEN, "forbidden", why.to_string());
    let Some(url) = twilio.status_callback() else {
        return Err(forbidden(
            "delivery reports are not configured (sms.twilio.status_callback)",
        ));
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "send an application/x-www-form-urlencoded body",
        ));
    }
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed form body: {e}")))?;
    let Some(sig) = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return Err(forbidden("missing X-Twilio-Signature"));
    };
    if !signature::verify_twilio(twilio.auth_token(), url, &params, sig) {
        tracing::warn!("SMS status callback with an invalid signature refused");
        return Err(forbidden("invalid X-Twilio-Signature"));
    }
    let field = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let sid = field("MessageSid")
        .or_else(|| field("SmsSid"))
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| ApiError::bad_request("missing or malformed `MessageSid`"))?;
    let status = field("MessageStatus")
        .or_else(|| field("SmsStatus"))
        .map(bounded_status)
        .ok_or_else(|| ApiError::bad_request("missing `MessageStatus`"))?;
    let error_code = field("ErrorCode")
        .map(|c| {
            c.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(16)
                .collect::<String>()
        })
        .filter(|c| !c.is_empty());
    let known = app
        .store
        .sms_update_status(sid, &status, error_code.as_deref(), now())
        .await?;
    if !known {
        tracing::info!(sid, "delivery report for an unknown message ignored");
    }
    let label = if KNOWN_STATUSES.contains(&status.as_str()) {
        status.as_str()
    } else {
        "other"
    };
    app.metrics.sms_delivery.with_label_values(&[label]).inc();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct MessageQuery {
    /// Only messages to this number (any spelling; national numbers need `sms.default_region`).
    // No pattern: which numbers exist is numbering-plan data (libphonenumber's) that no
    // pattern states; `format: phone` names that, and the description gives the spelling.
    #[param(format = "phone")]
    phone: Option<String>,
    /// At most this many, newest first, 1-1000 (default 100; values outside are clamped).
    #[param(minimum = -9223372036854775808i64, maximum = 9223372036854775807i64)]
    #[serde(default, deserialize_with = "super::optional_integer_text")]
    limit: Option<i64>,
}

/// An SMS the issuer sent, with its latest delivery status (never the code: it is not stored).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SmsMessageView {
    /// Id.
    pub id: String,
    /// `twilio`, `webhook` or `log`.
    pub provider: String,
    /// The provider's id (Twilio's message SID).
    #[schema(required = true)]
    pub provider_id: Option<String>,
    /// Recipient, E.164.
    pub phone: String,
    /// Latest status: `queued`, `sent`, `delivered`, `undelivered`, `failed`…
    pub status: String,
    /// The provider's error code, for failed deliveries.
    #[schema(required = true)]
    pub error_code: Option<String>,
    /// When it was sent (seconds since the epoch).
    pub created_at: i64,
    /// When its status last changed.
    pub updated_at: i64,
}

/// `GET /admin/sms/messages`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SmsMessageList {
    /// Messages, newest first.
    pub messages: Vec<SmsMessageView>,
}

impl From<SmsMessage> for SmsMessageView {
    fn from(m: SmsMessage) -> Self {
        SmsMessageView {
            id: m.id,
            provider: m.provider,
            provider_id: m.provider_id,
            phone: m.phone,
            status: m.status,
            error_code: m.error_code,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// Lists sent SMS with their delivery status.
#[utoipa::path(
    get,
    path = "/admin/sms/messages",
    tag = "admin",
    params(MessageQuery),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "Messages, newest first", body = SmsMessageList),
        (status = 400, description = "Bad query string or invalid phone number", body = ErrorBody),
        (status = 401, response = AdminUnauthorized),
        (status = 403, response = AdminForbidden),
        (status = 503, response = Unavailable),
    )
)]
async fn list_messages(
    State(app): State<Arc<App>>,
    RawQuery(q): RawQuery,
) -> Result<Json<SmsMessageList>, ApiError> {
    let q: MessageQuery = super::query(q)?;
    let phone = match q.phone.as_deref() {
        None => None,
        Some(p) => {
            let parsed = match app.sms.as_ref() {
                Some(sms) => sms.parse_phone(p, None),
                None => phone::parse(p, None),
            };
            Some(
                parsed
                    .map_err(|e| ApiError::bad_request(e.to_string()))?
                    .e164,
            )
        }
    };
    let list = app
        .store
        .sms_list_messages(phone.as_deref(), q.limit.unwrap_or(100).clamp(1, 1000))
        .await?;
    Ok(Json(SmsMessageList {
        messages: list.into_iter().map(SmsMessageView::from).collect(),
    }))
}
