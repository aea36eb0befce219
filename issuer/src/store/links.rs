//! Single-use link tokens of the email flows (address confirmation, email change, password
//! reset). Only the SHA-256 of a token is stored; consuming one is a single conditional
//! `UPDATE`, so of concurrent uses exactly one wins, across replicas too.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Store, StoreError};

/// A stored link token (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailLink {
    /// `confirm_email`, `change_email` or `reset_password`.
    pub purpose: String,
    /// The account it acts on.
    pub user_id: String,
    /// The address the link is about: the one to confirm, or the new one of a change.
    pub email: Option<String>,
    /// Unusable from this time on.
    pub expires_at: i64,
    /// When it was used (`None`: not yet).
    pub used_at: Option<i64>,
    /// When it was issued.
    pub created_at: i64,
}

/// Why [`Store::consume_email_link`] refused a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkRefusal {
    /// No such token (never issued, superseded by a newer one, or for another purpose).
    Unknown,
    /// Already used.
    Used,
    /// Past its expiry.
    Expired,
}

const COLUMNS: &str = "purpose, user_id, email, expires_at, used_at, created_at";

fn link_from_row(row: &AnyRow) -> Result<EmailLink, StoreError> {
    Ok(EmailLink {
        purpose: row.try_get(0)?,
        user_id: row.try_get(1)?,
        email: row.try_get(2)?,
        expires_at: row.try_get(3)?,
        used_at: row.try_get(4)?,
        created_at: row.try_get(5)?,
    })
}

impl Store {
    /// Stores a new link token for `user_id` and deletes the user's unused tokens of the same
    /// purpose (a newer link cancels older ones), in one transaction.
    pub async fn create_email_link(
        &self,
        token_hash: &str,
        purpose: &str,
        user_id: &str,
        email: Option<&str>,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM email_links WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
        )
        .bind(user_id)
        .bind(purpose)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO email_links (token_hash, {COLUMNS}) VALUES ($1, $2, $3, $4, $5, NULL, $6)"
        ))
        .bind(token_hash)
        .bind(purpose)
        .bind(user_id)
        .bind(email)
        .bind(expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The unused, unexpired token `token_hash` of one of `purposes`, without using it.
    pub async fn check_email_link(
        &self,
        token_hash: &str,
        purposes: &[&str],
        now: i64,
    ) -> Result<Result<EmailLink, LinkRefusal>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM email_links WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(link) = row.as_ref().map(link_from_row).transpose()? else {
            return Ok(Err(LinkRefusal::Unknown));
        };
        Ok(if !purposes.contains(&link.purpose.as_str()) {
            Err(LinkRefusal::Unknown)
        } else if link.used_at.is_some() {
            Err(LinkRefusal::Used)
        } else if link.expires_at <= now {
            Err(LinkRefusal::Expired)
        } else {
            Ok(link)
        })
    }

    /// Uses token `token_hash` of one of `purposes`: one conditional `UPDATE … WHERE used_at
    /// IS NULL AND expires_at > now`, so of concurrent callers exactly one gets the link.
    pub async fn consume_email_link(
        &self,
        token_hash: &str,
        purposes: &[&str],
        now: i64,
    ) -> Result<Result<EmailLink, LinkRefusal>, StoreError> {
        if purposes.is_empty() {
            return Ok(Err(LinkRefusal::Unknown));
        }
        // Placeholders $3.. for the purposes; the values are bound, never spliced in.
        let list: Vec<String> = (0..purposes.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "UPDATE email_links SET used_at = $2 \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
             AND purpose IN ({}) RETURNING {COLUMNS}",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(token_hash).bind(now);
        for p in purposes {
            q = q.bind(*p);
        }
        match q
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(link_from_row)
            .transpose()?
        {
            Some(link) => Ok(Ok(link)),
            // Lost, or never eligible: say which, for a clear error.
            None => Ok(self
                .check_email_link(token_hash, purposes, now)
                .await?
                .and(Err(LinkRefusal::Used))),
        }
    }

    /// Deletes tokens that expired before `before`; returns how many.
    pub async fn purge_email_links(&self, before: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM email_links WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    async fn file_store(dir: &std::path::Path) -> Store {
        let url = format!("sqlite://{}/db/issuer.db", dir.display());
        Store::connect(&url).await.expect("connect")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn email_links_single_use_expiry_and_supersession() {
        let dir = tempfile::tempdir().unwrap();
        let s = file_store(dir.path()).await;
        let p = ["reset_password"];
        s.create_email_link("h1", "reset_password", "u1", Some("a@x.io"), NOW, NOW + 60)
            .await
            .unwrap();
        // A check does not use it; another purpose does not see it.
        assert!(s.check_email_link("h1", &p, NOW).await.unwrap().is_ok());
        assert_eq!(
            s.consume_email_link("h1", &["confirm_email"], NOW)
                .await
                .unwrap(),
            Err(LinkRefusal::Unknown)
        );
        let link = s
            .consume_email_link("h1", &p, NOW + 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(link.user_id, "u1");
        assert_eq!(link.email.as_deref(), Some("a@x.io"));
        assert_eq!(
            s.consume_email_link("h1", &p, NOW + 2).await.unwrap(),
            Err(LinkRefusal::Used)
        );
        // Expiry is exclusive.
        s.create_email_link("h2", "reset_password", "u1", None, NOW, NOW + 60)
            .await
            .unwrap();
        assert_eq!(
            s.consume_email_link("h2", &p, NOW + 60).await.unwrap(),
            Err(LinkRefusal::Expired)
        );
        // A newer link of the same purpose cancels the older unused one, not other purposes.
        s.create_email_link("h3", "reset_password", "u2", None, NOW, NOW + 60)
            .await
            .unwrap();
        s.create_email_link("c1", "confirm_email", "u2", None, NOW, NOW + 60)
            .await
            .unwrap();
        s.create_email_link("h4", "reset_password", "u2", None, NOW, NOW + 60)
            .await
            .unwrap();
        assert_eq!(
            s.consume_email_link("h3", &p, NOW).await.unwrap(),
            Err(LinkRefusal::Unknown)
        );
        assert!(s.consume_email_link("h4", &p, NOW).await.unwrap().is_ok());
        assert!(s
            .consume_email_link("c1", &["confirm_email", "change_email"], NOW)
            .await
            .unwrap()
            .is_ok());
        // h1, h2, h4, c1 (h3 was deleted when h4 was issued).
        assert_eq!(s.purge_email_links(NOW + 61).await.unwrap(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn email_link_concurrent_uses_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(file_store(dir.path()).await);
        for round in 0..5 {
            let h = format!("race{round}");
            s.create_email_link(
                &h,
                "reset_password",
                &format!("u{round}"),
                None,
                NOW,
                NOW + 60,
            )
            .await
            .unwrap();
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let (s, h) = (s.clone(), h.clone());
                tasks.push(tokio::spawn(async move {
                    s.consume_email_link(&h, &["reset_password"], NOW).await
                }));
            }
            let mut wins = 0;
            for t in tasks {
                if t.await.unwrap().unwrap().is_ok() {
                    wins += 1;
                }
            }
            assert_eq!(wins, 1, "round {round}");
        }
    }
}
