//! SMS one-time-code login glue: the code check lives in [`crate::sms::SmsLogin`]; this counts
//! the outcome and starts the session (`amr: ["sms"]`).

use super::sessions::{self, TokenPair};
use super::AuthError;
use crate::app::App;
use crate::sms::{SmsLogin, VerifyError};

/// Checks an SMS code for a number and logs its account in (created on first verification
/// when `sms.signup` is on).
pub(crate) async fn verify_and_login(
    app: &App,
    sms: &SmsLogin,
    phone: &str,
    region: Option<&str>,
    code: &str,
    ip: &str,
) -> Result<TokenPair, AuthError> {
    let outcome = sms.verify(&app.store, phone, region, code, ip).await;
    let label = match &outcome {
        Ok(_) => "ok",
        Err(VerifyError::BadCode) => "bad_code",
        Err(VerifyError::Limited(_)) => "limited",
        Err(VerifyError::SignupDisabled) => "signup_disabled",
        Err(VerifyError::Disabled) => "account_disabled",
        Err(VerifyError::Phone(_)) => "invalid_phone",
        Err(VerifyError::Store(_)) => "error",
    };
    app.metrics
        .sms_verifications
        .with_label_values(&[label])
        .inc();
    app.metrics.login("sms", outcome.is_ok());
    let user = outcome?;
    let roles = user.roles.clone();
    sessions::start(app, &user, "sms", &[], &roles).await
}
