//! One read of an issuer's revocation feed (`GET …/v1/revocations?after=SEQ`, the issuer's
//! long poll) and the discovery of its address.

use serde::Deserialize;
use thiserror::Error;

use super::set::{Change, Cutoff, RecordKey};
use crate::jwks::fetch::http_get;
use crate::jwks::JwksError;

/// Largest answer read: a page holds at most 1,000 records of a few hundred bytes.
const MAX_ANSWER: usize = 4 << 20;

/// Why a read failed.
#[derive(Debug, Error)]
pub enum FeedError {
    /// Connecting, timing out, or an answer over the size cap.
    #[error(transparent)]
    Fetch(#[from] JwksError),
    /// The feed refused the credential.
    #[error("{0}: the feed refused the credential (401): check revocation.token_file")]
    Unauthorized(String),
    /// Any other status.
    #[error("{url}: HTTP status {status}, expected 200")]
    Status {
        /// What was read.
        url: String,
        /// The status received.
        status: u16,
    },
    /// The answer is not the feed's JSON.
    #[error("{url}: not a revocation feed answer: {reason}")]
    Invalid {
        /// What was read.
        url: String,
        /// The parse error.
        reason: String,
    },
}

/// One record as the issuer sends it; kinds this gateway does not know are skipped.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Record {
    Session {
        sid: String,
        until: i64,
    },
    Subject {
        sub: String,
        not_before: i64,
        until: i64,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct Answer {
    records: Vec<Record>,
    next: i64,
    snapshot: bool,
    more: bool,
}

/// A page of the feed, hashed into changes for the set.
pub struct Page {
    /// The records, as set changes.
    pub changes: Vec<Change>,
    /// Session records among them.
    pub sessions: u64,
    /// Subject records among them.
    pub subjects: u64,
    /// The cursor of the next read.
    pub next: i64,
    /// The page starts a snapshot: replace what is held.
    pub snapshot: bool,
    /// More records are ready.
    pub more: bool,
}

fn secs(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX)) as u32
}

/// Reads the records after `cursor` (a snapshot when None).
pub async fn read(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    cursor: Option<i64>,
    timeout: std::time::Duration,
) -> Result<Page, FeedError> {
    let target = match cursor {
        Some(after) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}after={after}")
        }
        None => url.to_owned(),
    };
    let answer = http_get(client, &target, None, Some(token), MAX_ANSWER, timeout).await?;
    match answer.status {
        200 => {}
        401 => return Err(FeedError::Unauthorized(url.to_owned())),
        status => {
            return Err(FeedError::Status {
                url: url.to_owned(),
                status,
            })
        }
    }
    let answer: Answer = serde_json::from_slice(&answer.body).map_err(|e| FeedError::Invalid {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let (mut sessions, mut subjects) = (0, 0);
    let changes = answer
        .records
        .into_iter()
        .filter_map(|r| match r {
            Record::Session { sid, until } => {
                sessions += 1;
                Some(Change::Session {
                    key: RecordKey::of(&sid),
                    until: secs(until),
                })
            }
            Record::Subject {
                sub,
                not_before,
                until,
            } => {
                subjects += 1;
                Some(Change::Subject {
                    key: RecordKey::of(&sub),
                    cutoff: Cutoff {
                        not_before: secs(not_before),
                        until: secs(until),
                    },
                })
            }
            Record::Unknown => None,
        })
        .collect();
    Ok(Page {
        changes,
        sessions,
        subjects,
        next: answer.next,
        snapshot: answer.snapshot,
        more: answer.more,
    })
}

/// The feed address the issuer `iss` publishes in its discovery document
/// (`revocation_feed_endpoint`).
pub async fn discover(
    client: &reqwest::Client,
    iss: &str,
    timeout: std::time::Duration,
) -> Result<String, FeedError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        iss.trim_end_matches('/')
    );
    let answer = http_get(client, &url, None, None, MAX_ANSWER, timeout).await?;
    if answer.status != 200 {
        return Err(FeedError::Status {
            url,
            status: answer.status,
        });
    }
    let invalid = |reason: &str| FeedError::Invalid {
        url: url.clone(),
        reason: reason.to_owned(),
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&answer.body).map_err(|e| invalid(&e.to_string()))?;
    let endpoint = doc
        .get("revocation_feed_endpoint")
        .and_then(|v| v.as_str())
        .ok_or_else(|| invalid("no revocation_feed_endpoint"))?;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(invalid("revocation_feed_endpoint is not an http(s) URL"));
    }
    Ok(endpoint.to_owned())
}
