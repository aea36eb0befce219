//! Failure budgets and rate limits: the keys are a typed enum, so every counter is named in
//! one place; the stored form of each older key is unchanged (counters survive an upgrade).
//! The counting itself (sliding windows shared through the database) is in `store/limits.rs`;
//! the budgets come from the configuration ([`Budget`], `config/limits.rs`).

use std::fmt;

use super::AuthError;
pub use crate::config::limits::Budget;
use crate::store::{LimitCheck, Store, StoreError};
use portcullis_common::time::unix_now as now;

/// One counter of the `limits` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitKey<'a> {
    /// Failed password logins for one login (normalised email or username).
    PasswordFailAccount(&'a str),
    /// Failed password logins from one client address.
    PasswordFailIp(&'a str),
    /// Confirmation-link resends for one account id.
    ConfirmResend(&'a str),
    /// Confirmation-link resends from one client address.
    ConfirmResendIp(&'a str),
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
    /// Anonymous accounts created from one client address.
    AnonymousIp(&'a str),
    /// Anonymous accounts created in total.
    AnonymousGlobal,
    /// Sign-ups from one client address.
    SignupIp(&'a str),
    /// Sign-ups in total.
    SignupGlobal,
    /// Mails sent in total (every kind).
    MailGlobal,
    /// Confirmation-link tokens submitted from one client address.
    EmailConfirmIp(&'a str),
    /// Password-reset-link tokens submitted from one client address.
    PasswordResetIp(&'a str),
    /// Failed refreshes from one client address.
    RefreshFailIp(&'a str),
    /// Grants at the OAuth token endpoint from one client address.
    TokenIp(&'a str),
    /// Introspections by one client (API key id, or `admin`).
    IntrospectClient(&'a str),
    /// Revocations by one client (API key id, or `admin`).
    RevokeClient(&'a str),
    /// Failed API-key authentications from one client address.
    ApiKeyFailIp(&'a str),
}

impl fmt::Display for LimitKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitKey::PasswordFailAccount(login) => write!(f, "pwfail:acct:{login}"),
            LimitKey::PasswordFailIp(ip) => write!(f, "pwfail:ip:{ip}"),
            LimitKey::ConfirmResend(user_id) => write!(f, "confirm-resend:{user_id}"),
            LimitKey::ConfirmResendIp(ip) => write!(f, "confirm-resend-ip:{ip}"),
            LimitKey::ForgotEmail(email) => write!(f, "forgot:email:{email}"),
            LimitKey::ForgotIp(ip) => write!(f, "forgot:ip:{ip}"),
            LimitKey::SmsSendIp(ip) => write!(f, "sms:send:ip:{ip}"),
            LimitKey::SmsSendPhone(e164) => write!(f, "sms:send:phone:{e164}"),
            LimitKey::SmsSendGlobal => f.write_str("sms:send:global"),
            LimitKey::SmsVerifyIp(ip) => write!(f, "sms:verify:ip:{ip}"),
            LimitKey::SmsTestNumber(e164) => write!(f, "sms:test:{e164}"),
            LimitKey::AnonymousIp(ip) => write!(f, "anon:ip:{ip}"),
            LimitKey::AnonymousGlobal => f.write_str("anon:global"),
            LimitKey::SignupIp(ip) => write!(f, "signup:ip:{ip}"),
            LimitKey::SignupGlobal => f.write_str("signup:global"),
            LimitKey::MailGlobal => f.write_str("mail:global"),
            LimitKey::EmailConfirmIp(ip) => write!(f, "confirm:ip:{ip}"),
            LimitKey::PasswordResetIp(ip) => write!(f, "reset:ip:{ip}"),
            LimitKey::RefreshFailIp(ip) => write!(f, "refreshfail:ip:{ip}"),
            LimitKey::TokenIp(ip) => write!(f, "token:ip:{ip}"),
            LimitKey::IntrospectClient(id) => write!(f, "introspect:client:{id}"),
            LimitKey::RevokeClient(id) => write!(f, "revoke:client:{id}"),
            LimitKey::ApiKeyFailIp(ip) => write!(f, "apikeyfail:ip:{ip}"),
        }
    }
}

/// Counts one hit on `key` if `budget` has room at `now`; the answer says whether it did.
pub(crate) async fn hit(
    store: &Store,
    key: LimitKey<'_>,
    budget: Budget,
    now: i64,
) -> Result<LimitCheck, StoreError> {
    store
        .hit_limit(&key.to_string(), budget.window, budget.max, now)
        .await
}

/// Whether a hit on `key` would fit in `budget` at `now`, without counting one.
pub(crate) async fn peek(
    store: &Store,
    key: LimitKey<'_>,
    budget: Budget,
    now: i64,
) -> Result<LimitCheck, StoreError> {
    store
        .peek_limit(&key.to_string(), budget.window, budget.max, now)
        .await
}

/// Clears `key` (a success resets a failure budget).
pub(crate) async fn reset(store: &Store, key: LimitKey<'_>) -> Result<(), StoreError> {
    store.reset_limit(&key.to_string()).await
}

/// Counts one hit on each key in order (a `None` budget is off) and refuses with the first
/// budget that has no room: the request is refused, with `Retry-After`.
///
/// Order matters: put per-client budgets first, so one abusive client exhausts its own
/// budget before it can eat into a shared one.
pub(crate) async fn take(
    store: &Store,
    budgets: &[(LimitKey<'_>, Option<Budget>)],
) -> Result<(), AuthError> {
    let t = now();
    for (key, budget) in budgets {
        let Some(budget) = budget else { continue };
        let check = hit(store, *key, *budget, t).await?;
        if !check.admitted {
            // Debug only: keys hold addresses and accounts; the 429 itself is in the request log.
            tracing::debug!(limit = %key, "refused: rate limit exhausted");
            return Err(AuthError::TooMany {
                retry_after: check.retry_after,
            });
        }
    }
    Ok(())
}

/// Refuses when any of the budgets has no room left, without counting (a failure budget
/// before an attempt, or a budget counted later elsewhere); the `Retry-After` is the longest
/// wait among them.
pub(crate) async fn check(
    store: &Store,
    budgets: &[(LimitKey<'_>, Option<Budget>)],
) -> Result<(), AuthError> {
    let t = now();
    let mut retry_after = 0;
    for (key, budget) in budgets {
        let Some(budget) = budget else { continue };
        retry_after = retry_after.max(peek(store, *key, *budget, t).await?.retry_after);
    }
    if retry_after > 0 {
        return Err(AuthError::TooMany { retry_after });
    }
    Ok(())
}

/// Counts one hit on each budget whatever the verdict (a failure after a failed attempt; a
/// full budget stays full).
pub(crate) async fn count(
    store: &Store,
    budgets: &[(LimitKey<'_>, Option<Budget>)],
) -> Result<(), StoreError> {
    let t = now();
    for (key, budget) in budgets {
        if let Some(budget) = budget {
            hit(store, *key, *budget, t).await?;
        }
    }
    Ok(())
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

    #[test]
    fn new_keys_are_distinct() {
        let keys = [
            LimitKey::ConfirmResendIp("x"),
            LimitKey::AnonymousIp("x"),
            LimitKey::AnonymousGlobal,
            LimitKey::SignupIp("x"),
            LimitKey::SignupGlobal,
            LimitKey::MailGlobal,
            LimitKey::EmailConfirmIp("x"),
            LimitKey::PasswordResetIp("x"),
            LimitKey::RefreshFailIp("x"),
            LimitKey::TokenIp("x"),
            LimitKey::IntrospectClient("x"),
            LimitKey::RevokeClient("x"),
            LimitKey::ApiKeyFailIp("x"),
            LimitKey::ConfirmResend("x"),
            LimitKey::ForgotIp("x"),
            LimitKey::PasswordFailIp("x"),
        ];
        let spelled: std::collections::HashSet<String> =
            keys.iter().map(ToString::to_string).collect();
        assert_eq!(spelled.len(), keys.len());
    }
}
