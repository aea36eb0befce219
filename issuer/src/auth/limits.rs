//! Failure budgets and rate limits: the keys are a typed enum, so every counter is named in
//! one place; the stored form of each key is unchanged (counters survive an upgrade).

use std::fmt;

use crate::store::{Store, StoreError};

/// One counter of the `limits` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitKey<'a> {
    /// Failed password logins for one login (normalised email or username).
    PasswordFailAccount(&'a str),
    /// Failed password logins from one client address.
    PasswordFailIp(&'a str),
    /// Confirmation-link resends for one account id.
    ConfirmResend(&'a str),
    /// Password-reset requests for one (normalised) address.
    ForgotEmail(&'a str),
    /// Password-reset requests from one client address.
    ForgotIp(&'a str),
    /// SMS sends to one client address.
    SmsSendIp(&'a str),
    /// SMS sends to one E.164 number.
    SmsSendPhone(&'a str),
    /// SMS sends in total.
    SmsSendGlobal,
    /// SMS code verifications from one client address.
    SmsVerifyIp(&'a str),
    /// Attempts on one reviewers' test number (fixed code).
    SmsTestNumber(&'a str),
}

impl fmt::Display for LimitKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitKey::PasswordFailAccount(login) => write!(f, "pwfail:acct:{login}"),
            LimitKey::PasswordFailIp(ip) => write!(f, "pwfail:ip:{ip}"),
            LimitKey::ConfirmResend(user_id) => write!(f, "confirm-resend:{user_id}"),
            LimitKey::ForgotEmail(email) => write!(f, "forgot:email:{email}"),
            LimitKey::ForgotIp(ip) => write!(f, "forgot:ip:{ip}"),
            LimitKey::SmsSendIp(ip) => write!(f, "sms:send:ip:{ip}"),
            LimitKey::SmsSendPhone(e164) => write!(f, "sms:send:phone:{e164}"),
            LimitKey::SmsSendGlobal => f.write_str("sms:send:global"),
            LimitKey::SmsVerifyIp(ip) => write!(f, "sms:verify:ip:{ip}"),
            LimitKey::SmsTestNumber(e164) => write!(f, "sms:test:{e164}"),
        }
    }
}

/// Counts one hit on `key` in the fixed window of `window` seconds holding `now`; returns the
/// window's count so far.
pub(crate) async fn hit(
    store: &Store,
    key: LimitKey<'_>,
    window: i64,
    now: i64,
) -> Result<i64, StoreError> {
    store.hit_limit(&key.to_string(), window, now).await
}

/// The count of `key` in the window holding `now`, without counting.
pub(crate) async fn peek(
    store: &Store,
    key: LimitKey<'_>,
    window: i64,
    now: i64,
) -> Result<i64, StoreError> {
    store.peek_limit(&key.to_string(), window, now).await
}

/// Clears `key` (a success resets a failure budget).
pub(crate) async fn reset(store: &Store, key: LimitKey<'_>) -> Result<(), StoreError> {
    store.reset_limit(&key.to_string()).await
}

/// Seconds until the fixed window of `len` seconds containing `now` ends.
pub(crate) fn window_left(len: i64, now: i64) -> i64 {
    len - now.rem_euclid(len)
}

#[cfg(test)]
mod tests {
    use super::LimitKey;

    #[test]
    fn stored_keys_keep_their_historical_spelling() {
        assert_eq!(
            LimitKey::PasswordFailAccount("a@b.c").to_string(),
            "pwfail:acct:a@b.c"
        );
        assert_eq!(
            LimitKey::PasswordFailIp("1.2.3.4").to_string(),
            "pwfail:ip:1.2.3.4"
        );
        assert_eq!(
            LimitKey::ConfirmResend("u1").to_string(),
            "confirm-resend:u1"
        );
        assert_eq!(
            LimitKey::ForgotEmail("a@b.c").to_string(),
            "forgot:email:a@b.c"
        );
        assert_eq!(LimitKey::ForgotIp("::1").to_string(), "forgot:ip:::1");
        assert_eq!(LimitKey::SmsSendIp("::1").to_string(), "sms:send:ip:::1");
        assert_eq!(
            LimitKey::SmsSendPhone("+1").to_string(),
            "sms:send:phone:+1"
        );
        assert_eq!(LimitKey::SmsSendGlobal.to_string(), "sms:send:global");
        assert_eq!(
            LimitKey::SmsVerifyIp("::1").to_string(),
            "sms:verify:ip:::1"
        );
        assert_eq!(LimitKey::SmsTestNumber("+1").to_string(), "sms:test:+1");
    }
}
