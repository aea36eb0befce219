//! SMS one-time codes and the SMS message log.
//!
//! Codes move `pending` → `active` (sent) → `consumed`, or end `cancelled` (a newer code was
//! sent) or `failed` (the provider refused it). Every verification attempt is reserved with
//! one conditional `UPDATE` before the code is compared, so concurrent guesses can never
//! compare more than `max_attempts` candidates against one code.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{new_id, Store, StoreError};

/// One SMS as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsMessage {
    /// Our id.
    pub id: String,
    /// `twilio`, `webhook` or `log`.
    pub provider: String,
    /// The provider's id (Twilio's message SID), the key of delivery reports.
    pub provider_id: Option<String>,
    /// Recipient, E.164.
    pub phone: String,
    /// Last known status.
    pub status: String,
    /// The provider's error code for failed deliveries.
    pub error_code: Option<String>,
    /// When it was sent.
    pub created_at: i64,
    /// When its status last changed.
    pub updated_at: i64,
}

/// Delivery statuses after which nothing changes; a late `sent` must not overwrite them.
const FINAL_STATUSES: &str = "('delivered', 'undelivered', 'failed', 'canceled', 'read')";

const MESSAGE_COLUMNS: &str =
    "id, provider, provider_id, phone, status, error_code, created_at, updated_at";

fn message_from_row(row: &AnyRow) -> Result<SmsMessage, StoreError> {
    Ok(SmsMessage {
        id: row.try_get(0)?,
        provider: row.try_get(1)?,
        provider_id: row.try_get(2)?,
        phone: row.try_get(3)?,
        status: row.try_get(4)?,
        error_code: row.try_get(5)?,
        created_at: row.try_get(6)?,
        updated_at: row.try_get(7)?,
    })
}

impl Store {
    /// Claims the right to send to `phone` now: `Ok(None)` when granted, else
    /// `Ok(Some(seconds))` until the previous send's interval ends. One upsert on the shared
    /// `rate_limits` table, so two replicas (or two concurrent requests) cannot both win.
    pub async fn sms_claim_interval(
        &self,
        phone: &str,
        interval_secs: i64,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        if interval_secs <= 0 {
            return Ok(None);
        }
        let key = sms_interval_key(phone);
        let won = sqlx::query_scalar::<_, i64>(
            "INSERT INTO rate_limits (limit_key, window_start, hits, expires_at) \
             VALUES ($1, $2, 1, $3) \
             ON CONFLICT (limit_key) DO UPDATE SET window_start = excluded.window_start, \
               hits = 1, expires_at = excluded.expires_at \
             WHERE rate_limits.expires_at <= excluded.window_start \
             RETURNING hits",
        )
        .bind(&key)
        .bind(now)
        .bind(now.saturating_add(interval_secs))
        .fetch_optional(&self.pool)
        .await?;
        if won.is_some() {
            return Ok(None);
        }
        let until =
            sqlx::query_scalar::<_, i64>("SELECT expires_at FROM rate_limits WHERE limit_key = $1")
                .bind(&key)
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or(now + 1);
        Ok(Some((until - now).max(1)))
    }

    /// Gives back a claim of [`Store::sms_claim_interval`] (the send failed: retrying must
    /// not wait for an SMS that never left).
    pub async fn sms_release_interval(&self, phone: &str) -> Result<(), StoreError> {
        self.reset_limit(&sms_interval_key(phone)).await
    }

    /// Deletes codes that expired before `codes_before` and message records created before
    /// `messages_before`; returns how many of each.
    pub async fn purge_sms(
        &self,
        codes_before: i64,
        messages_before: i64,
    ) -> Result<(u64, u64), StoreError> {
        let codes = sqlx::query("DELETE FROM sms_codes WHERE expires_at < $1")
            .bind(codes_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let messages = sqlx::query("DELETE FROM sms_messages WHERE created_at < $1")
            .bind(messages_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok((codes, messages))
    }

    /// Stores a new code in state `pending`; returns its id.
    pub async fn sms_insert_code(
        &self,
        phone: &str,
        code_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<String, StoreError> {
        let id = new_id();
        sqlx::query(
            "INSERT INTO sms_codes (id, phone, code_hash, state, attempts, created_at, expires_at) \
             VALUES ($1, $2, $3, 'pending', 0, $4, $5)",
        )
        .bind(&id)
        .bind(phone)
        .bind(code_hash)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// After a successful send: makes code `id` the one live code of its phone (every other
    /// pending or active code of the phone is cancelled) and logs the message, in one
    /// transaction. Also forgets this phone's codes older than a day.
    pub async fn sms_activate_code(
        &self,
        id: &str,
        message: &SmsMessage,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE sms_codes SET state = 'cancelled' \
             WHERE phone = $1 AND id <> $2 AND state IN ('pending', 'active')",
        )
        .bind(&message.phone)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE sms_codes SET state = 'active' WHERE id = $1 AND state = 'pending'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sms_codes WHERE phone = $1 AND created_at < $2")
            .bind(&message.phone)
            .bind(now - 86_400)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO sms_messages ({MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&message.id)
        .bind(&message.provider)
        .bind(message.provider_id.as_deref())
        .bind(&message.phone)
        .bind(&message.status)
        .bind(message.error_code.as_deref())
        .bind(message.created_at)
        .bind(message.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// After a failed send: the code can never be verified.
    pub async fn sms_fail_code(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sms_codes SET state = 'failed' WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Spends one attempt on the live code of `phone` and returns `(id, code_hash)` to compare
    /// against; `None` when there is no live code (none sent, expired, used, cancelled, or
    /// `max_attempts` already spent). The spend is a conditional `UPDATE`, atomic on both
    /// engines: however many requests race, at most `max_attempts` ever get a hash.
    pub async fn sms_spend_attempt(
        &self,
        phone: &str,
        now: i64,
        max_attempts: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let Some(id) = sqlx::query_scalar::<_, String>(
            "SELECT id FROM sms_codes WHERE phone = $1 AND state = 'active' AND expires_at > $2 \
             ORDER BY created_at DESC, id LIMIT 1",
        )
        .bind(phone)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let hash = sqlx::query_scalar::<_, String>(
            "UPDATE sms_codes SET attempts = attempts + 1 \
             WHERE id = $1 AND state = 'active' AND expires_at > $2 AND attempts < $3 \
             RETURNING code_hash",
        )
        .bind(&id)
        .bind(now)
        .bind(max_attempts)
        .fetch_optional(&self.pool)
        .await?;
        Ok(hash.map(|h| (id, h)))
    }

    /// Marks code `id` used; `false` when another request used it (or it died) first.
    pub async fn sms_consume_code(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE sms_codes SET state = 'consumed' \
             WHERE id = $1 AND state = 'active' AND expires_at > $2",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a delivery report for the message the provider calls `provider_id`; `false`
    /// when no such message is logged. A final status is never replaced by an earlier one
    /// that arrives late.
    pub async fn sms_update_status(
        &self,
        provider_id: &str,
        status: &str,
        error_code: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "UPDATE sms_messages SET status = $2, error_code = COALESCE($3, error_code), \
             updated_at = $4 \
             WHERE provider_id = $1 AND (status NOT IN {FINAL_STATUSES} OR $5 = 1)"
        ))
        .bind(provider_id)
        .bind(status)
        .bind(error_code)
        .bind(now)
        .bind(i64::from(FINAL_STATUSES.contains(&format!("'{status}'"))))
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            return Ok(true);
        }
        // Known but already final: accepted, nothing to change.
        let known =
            sqlx::query_scalar::<_, String>("SELECT id FROM sms_messages WHERE provider_id = $1")
                .bind(provider_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(known.is_some())
    }

    /// The newest messages, to one phone when given.
    pub async fn sms_list_messages(
        &self,
        phone: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SmsMessage>, StoreError> {
        let rows = match phone {
            Some(p) => {
                sqlx::query(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM sms_messages WHERE phone = $1 \
                     ORDER BY created_at DESC, id LIMIT $2"
                ))
                .bind(p)
                .bind(limit.max(0))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM sms_messages \
                     ORDER BY created_at DESC, id LIMIT $1"
                ))
                .bind(limit.max(0))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(message_from_row).collect()
    }
}

fn sms_interval_key(phone: &str) -> String {
    format!("sms:interval:{phone}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    async fn file_store(dir: &tempfile::TempDir) -> Store {
        let url = format!("sqlite://{}/db/issuer.db", dir.path().display());
        Store::connect(&url).await.expect("connect")
    }

    fn message(phone: &str) -> SmsMessage {
        SmsMessage {
            id: new_id(),
            provider: "log".into(),
            provider_id: Some(new_id()),
            phone: phone.into(),
            status: "queued".into(),
            error_code: None,
            created_at: NOW,
            updated_at: NOW,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_attempts_never_exceed_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        let id = store
            .sms_insert_code("+12015550123", "h", NOW, NOW + 300)
            .await
            .expect("insert");
        store
            .sms_activate_code(&id, &message("+12015550123"), NOW)
            .await
            .expect("activate");
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.sms_spend_attempt("+12015550123", NOW, 5).await })
            })
            .collect();
        let mut granted = 0;
        for t in tasks {
            if t.await.expect("task").expect("spend").is_some() {
                granted += 1;
            }
        }
        assert_eq!(
            granted, 5,
            "exactly max_attempts comparisons, however they race"
        );
        // Dead now, even for a consume.
        assert!(store
            .sms_spend_attempt("+12015550123", NOW, 5)
            .await
            .expect("spend")
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn codes_are_single_use_expire_and_replace_each_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        let p = "+12015550123";
        let first = store
            .sms_insert_code(p, "h1", NOW, NOW + 300)
            .await
            .expect("insert");
        // Pending (not sent yet): not verifiable.
        assert!(store
            .sms_spend_attempt(p, NOW, 5)
            .await
            .expect("spend")
            .is_none());
        store
            .sms_activate_code(&first, &message(p), NOW)
            .await
            .expect("activate");
        let second = store
            .sms_insert_code(p, "h2", NOW + 1, NOW + 301)
            .await
            .expect("insert");
        store
            .sms_activate_code(&second, &message(p), NOW + 1)
            .await
            .expect("activate");
        let (id, hash) = store
            .sms_spend_attempt(p, NOW + 2, 5)
            .await
            .expect("spend")
            .expect("live");
        assert_eq!(
            (id.as_str(), hash.as_str()),
            (second.as_str(), "h2"),
            "the newer code replaced the older"
        );
        assert!(
            !store
                .sms_consume_code(&first, NOW + 2)
                .await
                .expect("consume"),
            "cancelled"
        );
        assert!(store
            .sms_consume_code(&second, NOW + 2)
            .await
            .expect("consume"));
        assert!(
            !store
                .sms_consume_code(&second, NOW + 2)
                .await
                .expect("consume"),
            "single use"
        );
        // Expiry.
        let third = store
            .sms_insert_code(p, "h3", NOW, NOW + 300)
            .await
            .expect("insert");
        store
            .sms_activate_code(&third, &message(p), NOW)
            .await
            .expect("activate");
        assert!(store
            .sms_spend_attempt(p, NOW + 300, 5)
            .await
            .expect("spend")
            .is_none());
        assert!(!store
            .sms_consume_code(&third, NOW + 300)
            .await
            .expect("consume"));
        // A failed send leaves nothing verifiable.
        let fourth = store
            .sms_insert_code(p, "h4", NOW + 400, NOW + 700)
            .await
            .expect("insert");
        store.sms_fail_code(&fourth).await.expect("fail");
        assert!(store
            .sms_spend_attempt(p, NOW + 400, 5)
            .await
            .expect("spend")
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_send_per_interval_however_requests_race() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.sms_claim_interval("+12015550123", 60, NOW).await })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            match t.await.expect("task").expect("claim") {
                None => won += 1,
                Some(wait) => assert_eq!(wait, 60),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(
            store
                .sms_claim_interval("+12015550123", 60, NOW + 59)
                .await
                .expect("claim"),
            Some(1)
        );
        assert_eq!(
            store
                .sms_claim_interval("+12015550123", 60, NOW + 60)
                .await
                .expect("claim"),
            None
        );
        // Released after a failed send: the next claim wins at once.
        store
            .sms_release_interval("+12015550123")
            .await
            .expect("release");
        assert_eq!(
            store
                .sms_claim_interval("+12015550123", 60, NOW + 61)
                .await
                .expect("claim"),
            None
        );
        assert_eq!(
            store
                .sms_claim_interval("+12015550123", 0, NOW + 61)
                .await
                .expect("claim"),
            None
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn delivery_statuses_never_go_back_from_final() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        let p = "+12015550123";
        let id = store
            .sms_insert_code(p, "h", NOW, NOW + 300)
            .await
            .expect("insert");
        let m = message(p);
        let sid = m.provider_id.clone().expect("sid");
        store
            .sms_activate_code(&id, &m, NOW)
            .await
            .expect("activate");
        assert!(store
            .sms_update_status(&sid, "sent", None, NOW + 1)
            .await
            .expect("update"));
        assert!(store
            .sms_update_status(&sid, "delivered", None, NOW + 2)
            .await
            .expect("update"));
        assert!(store
            .sms_update_status(&sid, "sent", None, NOW + 3)
            .await
            .expect("update"));
        assert!(!store
            .sms_update_status("SMunknown", "sent", None, NOW)
            .await
            .expect("update"));
        let list = store.sms_list_messages(Some(p), 10).await.expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status, "delivered");
        assert_eq!(list[0].updated_at, NOW + 2);
        assert!(store
            .sms_list_messages(Some("+12015550124"), 10)
            .await
            .expect("list")
            .is_empty());
        assert_eq!(
            store.sms_list_messages(None, 10).await.expect("list").len(),
            1
        );
    }
}
