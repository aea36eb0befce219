//! Deleting what has ended, so the database does not grow with every login: sessions and
//! their refresh tokens, rate-limit windows, email link tokens, SMS codes and old SMS message
//! records, revocation records that no longer matter. Every replica runs [`Store::purge_expired`] periodically; the deletes are
//! idempotent, so replicas need not coordinate.

use super::{Store, StoreError};

/// Ended (expired or revoked) sessions stay this long, so recent revocations remain visible
/// in the admin API and to introspection.
pub const KEEP_ENDED_SESSIONS: i64 = 7 * 86_400;

/// Expired or used email links and SMS codes stay this long (for investigating a complaint).
pub const KEEP_SPENT_SECRETS: i64 = 86_400;

/// SMS message records (delivery status, shown by the admin API) stay this long.
pub const KEEP_SMS_MESSAGES: i64 = 30 * 86_400;

/// How many rows of each kind one [`Store::purge_expired`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Sessions (with their refresh tokens).
    pub sessions: u64,
    /// Rate-limit windows that ended.
    pub limits: u64,
    /// Email link tokens.
    pub email_links: u64,
    /// SMS codes.
    pub sms_codes: u64,
    /// SMS message records.
    pub sms_messages: u64,
    /// Revocation records no access token depends on any more.
    pub revocations: u64,
}

impl Purged {
    /// Rows deleted in all.
    pub fn total(&self) -> u64 {
        self.sessions
            + self.limits
            + self.email_links
            + self.sms_codes
            + self.sms_messages
            + self.revocations
    }
}

impl Store {
    /// Deletes every row that ended long enough before `now` (see the `KEEP_*` constants).
    pub async fn purge_expired(&self, now: i64) -> Result<Purged, StoreError> {
        let spent = now - KEEP_SPENT_SECRETS;
        let (sms_codes, sms_messages) = self.purge_sms(spent, now - KEEP_SMS_MESSAGES).await?;
        Ok(Purged {
            sessions: self.purge_sessions(now - KEEP_ENDED_SESSIONS).await?,
            limits: self.purge_limits(now).await?,
            email_links: self.purge_email_links(spent).await?,
            sms_codes,
            sms_messages,
            revocations: self.purge_revocations(now).await?,
        })
    }
}
